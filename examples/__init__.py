"""Runnable examples of the streaming framework (``sluicegate serve --app examples.chat:create_app``)."""
