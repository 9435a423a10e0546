"""module-service-controller: gives Koupleless ModuleDeployments their module Service."""

__version__ = "0.1.0"
