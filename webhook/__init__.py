"""backend-injector: a mutating admission webhook that points pods at an external backend."""

__version__ = "0.1.0"
