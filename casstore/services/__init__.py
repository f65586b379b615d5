"""Services: the operations the API and CLI call, one module per concern.

Each public method runs in its own transaction(s), writes its audit event in
the transaction that changes state, and raises only casstore.errors.
"""
