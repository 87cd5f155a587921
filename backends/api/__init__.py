"""The JSON API: LocalAI's ``/backends/*`` routes, the node routes and the agents' routes."""
