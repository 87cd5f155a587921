"""The use cases that the pages, the API, the commands, the tasks and the agents call."""
