"""Package list only; pyproject.toml holds everything else.

The Alembic migrations live at the top of the repository (``migrations/``,
where ``alembic.ini`` and contributors expect them); a wheel carries them
inside the package as ``gateway/migrations`` (see ``gateway.store.db``).
"""

from setuptools import find_namespace_packages, setup

setup(
    # namespace discovery, as pyproject's default: admin/templates and admin/static are data folders
    packages=[
        *find_namespace_packages(include=["gateway", "gateway.*"], exclude=["*.__pycache__"]),
        "gateway.migrations",
        "gateway.migrations.versions",
    ],
    package_dir={"gateway.migrations": "migrations"},
)
