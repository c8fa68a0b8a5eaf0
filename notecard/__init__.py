"""The application: the ``notecard`` command, the local Redis manager, the admin client, the demo."""
