"""A minimal Django project guarded by runtime_guard.

Run (from the repository root; add ``EXAMPLE_LEAK=cache,redis`` to switch the leaks on)::

    python examples/django_project/manage.py runserver 127.0.0.1:8002 --noreload
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the project, and examples/leaky.py
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
