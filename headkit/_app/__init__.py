"""The application on top of the library: the ``headkit`` command (``cli``), the demo (``demo``,
``demo_data``), image reading (``data``) and model construction by name (``zoo``). Nothing in
the library imports it.
"""
