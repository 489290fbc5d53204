"""The package version, in a module of its own so that any module can read it without importing the package
(``artifact`` and the bench record it; importing ``__init__`` from them would run every registration first)."""
__version__ = '0.2.0'
