"""HTTP only: parse into protocol models, call a service, shape the reply."""
