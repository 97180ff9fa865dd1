"""The demo group on the in-memory backend: run it in one process.

    marun --single-process examples.settings_memory
"""
BUS = {'default': {'backend': 'microagent.tools.memory.MemorySignalBus', 'dsn': 'memory://demo'}}
BROKER = {'default': {'backend': 'microagent.tools.memory.MemoryBroker', 'dsn': 'memory://demo'}}

AGENT = {
    'users': {'backend': 'examples.users.UserAgent', 'bus': 'default', 'broker': 'default'},
    'comments': {'backend': 'examples.comments.CommentAgent', 'bus': 'default'},
    'mailer': {'backend': 'examples.mailer.MailerAgent', 'bus': 'default', 'broker': 'default'},
    'push': {'backend': 'examples.push.PushAgent', 'broker': 'default'},
    'billing': {'backend': 'examples.billing.BillingAgent', 'bus': 'default', 'replicas': 2},
}
