"""The test kit for users' own tests: ``TestGroup`` runs agents on an isolated backend and awaits
what they do; ``check_contract`` proves each agent handles an example of everything it declares;
``example``/``examples`` give typed payloads; the pytest fixtures come with the package."""
from microagent.contract.examples import example, examples
from microagent.testing.contract import ContractCase, ContractFailed, ContractReport, check_contract
from microagent.testing.group import ExpectationFailed, GroupFactory, HandlerProbe, NotInGroup, Sent, SentLog, TestGroup

__all__ = ['ContractCase', 'ContractFailed', 'ContractReport', 'ExpectationFailed', 'GroupFactory', 'HandlerProbe',
           'NotInGroup', 'Sent', 'SentLog', 'TestGroup', 'check_contract', 'example', 'examples']
