"""The contract of agents as data: ``info()``, JSON Schema and AsyncAPI export, the fleet model,
compatibility between two versions, example payloads and the offline docs page.

Nothing here imports an agent, an engine or a backend: these are functions over declarations."""
