"""pytest plugin (``pytest11`` entry point): leak tests built on the guard's machinery."""
