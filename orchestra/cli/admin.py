"""`orchestra`: the admin's CLI: configuration, database, the scheduler service, users."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestra.cli import jsonout, tables
from orchestra.cli.common import add_version, console, context, new_app, print_json, run
from orchestra.cli.listing import JsonOption, NoHeaderOption, emit
from orchestra.config import load_settings
from orchestra.db.engine import HEAD_REVISION, current_revision, make_engine, upgrade
from orchestra.errors import OrchestraError
from orchestra.security import roles
from orchestra.services.context import Context

app = new_app("Orchestra administration: config, database, scheduler service, users.", root=True)
add_version(app)
config_app = new_app("Inspect the effective configuration.")
db_app = new_app("Database schema.")
scheduler_app = new_app("The scheduler service.")
user_app = new_app("Users: PostgreSQL login roles, admins, shares and caps.")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(scheduler_app, name="scheduler")
app.add_typer(user_app, name="user")


@config_app.command("show")
def config_show(
    fmt: Annotated[Optional[str], typer.Option("--format", "-o", metavar="COLUMNS",
                                               help="columns to show, comma-separated; any of: key, value, source")] = None,
    noheader: NoHeaderOption = False,
    as_json: JsonOption = False,
) -> None:
    """Print the effective settings and where each came from (passwords in the database URL masked)."""
    from orchestra.secrets import mask_url

    s = load_settings()
    data = {
        # The URL may hold a PostgreSQL password, and this output gets pasted into tickets.
        "home": str(s.home), "database_url": mask_url(s.database_url), "user": s.user,
        "config_file": str(s.config_file) if s.config_file else None,
        "scheduler": s.scheduler.__dict__, "fairshare": s.fairshare.__dict__,
        "retention": {**s.retention.__dict__, "notice_days": list(s.retention.notice_days)},
        "clusters": {
            name: {"backend": c.backend, "storage": str(c.storage), "default_queue": c.default_queue,
                   "restrict_to_storage": c.restrict_to_storage,
                   "queues": {q.name: q.__dict__ for q in c.queues.values()},
                   **({"kubernetes": dict(c.kubernetes.__dict__)} if c.backend == "kubernetes" else {})}
            for name, c in s.clusters.items()
        },
        "accounts": {name: {"share": a.share, "users": list(a.users)} for name, a in s.accounts.items()},
        "sources": s.sources,
    }
    if as_json:
        print_json(data)
        return
    emit(tables.settings(_setting_rows(data, s.sources)), fmt, noheader)


def _setting_rows(data: dict, src: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, value, where it came from) for each setting, in the config file's own words."""
    rows = [(key, str(data[key]), src.get(key, "default")) for key in ("config_file", "home", "database_url", "user")]
    rows[0] = ("config_file", data["config_file"] or "(none: defaults)", "-")
    for section in ("scheduler", "fairshare", "retention"):
        rows += [(f"{section}.{key}", str(value), src.get(f"{section}.{key}", "default"))
                 for key, value in data[section].items()]
    for name, c in data["clusters"].items():
        rows.append((f"clusters.{name}", f"backend={c['backend']} storage={c['storage']} "
                     f"default_queue={c['default_queue']}", str(src.get(f"clusters.{name}"))))
        rows += [(f"clusters.{name}.queues.{q}", f"slots={v['slots']} cpu={v['cpu']} memory={v['memory']} gpu={v['gpu']}",
                  str(src.get(f"clusters.{name}"))) for q, v in c["queues"].items()]
        rows += [(f"clusters.{name}.kubernetes.{key}", str(value), str(src.get(f"clusters.{name}")))
                 for key, value in c.get("kubernetes", {}).items()]
    rows += [(f"accounts.{name}", f"share={a['share']:g} users={', '.join(a['users']) or '-'}",
              str(src.get(f"accounts.{name}"))) for name, a in data["accounts"].items()]
    return rows


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema up to date (Alembic migrations)."""
    engine = make_engine(load_settings().database_url)
    before = _revision(engine)
    upgrade(engine)
    console.print(f"database at revision {HEAD_REVISION} (was {before or 'empty'})")


def _revision(engine) -> Optional[str]:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import OperationalError

    try:
        return current_revision(engine)
    except OperationalError as exc:
        raise OrchestraError(f"cannot reach the database: {str(exc.orig).strip().splitlines()[0]}; "
                             "check ORCHESTRA_DATABASE_URL") from None


@db_app.command("status")
def db_status() -> None:
    """The database's schema revision, and whether `orchestra db upgrade` is needed."""
    engine = make_engine(load_settings().database_url)
    revision = _revision(engine)
    state = "current" if revision == HEAD_REVISION else "behind: run `orchestra db upgrade`"
    console.print(f"revision {revision or 'none'} ({state})")


@scheduler_app.command("run")
def scheduler_run(
    once: Annotated[bool, typer.Option("--once", help="run exactly one cycle and exit (cron)")] = False,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="cycle until nothing can run without a user's action, then say what remains")] = False,
    interval: Annotated[Optional[float], typer.Option("--interval", help="seconds between cycles")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every step (DEBUG level)")] = False,
    metrics_port: Annotated[Optional[int], typer.Option(
        "--metrics-port", min=1, max=65535, metavar="PORT",
        help="serve Prometheus metrics on this port (on [scheduler] metrics_host, 127.0.0.1 by default)")] = None,
) -> None:
    """Run the scheduler service (one active scheduler per database, held by a lease)."""
    from orchestra import metrics as service_metrics
    from orchestra.scheduler.loop import LoopOptions, run as run_loop

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s")
    # The service acts for nobody: ORCHESTRA_USER is ignored, the connected role must be a scheduler.
    ctx = Context.from_env()
    ctx = dataclasses.replace(ctx, _identity=roles.require_scheduler(ctx))
    if any(c.backend == "local" for c in ctx.settings.clusters.values()):
        from orchestra.backends.local import run_jobs_as

        run_jobs_as(ctx.settings)  # a non-root scheduler told to run jobs as their owners refuses here
    port = metrics_port or ctx.settings.scheduler.metrics_port
    metrics = service_metrics.Metrics(ctx.settings) if port else None
    host = ctx.settings.scheduler.metrics_host
    say = logging.getLogger("orchestra.scheduler").info
    servers = []

    def serve_metrics() -> None:  # once the loop handles SIGTERM: a scrape that answers means it does
        if metrics is not None:
            servers.append(service_metrics.serve(metrics, port, host))  # a port in use: refused here
            say(f"metrics at http://{host}:{port}/metrics")

    try:
        code = run_loop(ctx, LoopOptions(once=once, until_idle=until_idle, interval=interval), say=say,
                        metrics=metrics, on_signals=serve_metrics)
    finally:
        for server in servers:
            service_metrics.stop(server)
    raise typer.Exit(code)


@app.command("web")
def web_cmd(
    host: Annotated[Optional[str], typer.Option("--host", help="address to listen on ([web] host, 127.0.0.1 by default)")] = None,
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, metavar="PORT",
                                                help="TCP port to listen on ([web] port, 8080 by default)")] = None,
) -> None:
    """Serve the read-only web dashboard and its JSON API (the scheduler need not run)."""
    from orchestra.web.server import serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("orchestra.web").setLevel(logging.INFO)
    ctx = Context.from_env()
    web = ctx.settings.web
    host, port = host or web.host, port or web.port
    serve(ctx, host, port)  # a port in use: refused in one line before anything is served


@app.command("gc")
def gc_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would go; change nothing")] = False,
    now: Annotated[Optional[str], typer.Option("--now", metavar="WHEN", help=(
        "with --dry-run: as if it were WHEN (ISO date or epoch seconds), to see what goes then"))] = None,
) -> None:
    """Remove finished tasks older than [retention] keep_finished_days, with their jobs, attempts and
    logs (outputs too with purge_outputs), as the service does daily (admins only)."""
    from orchestra.cli import gc_view
    from orchestra.services import retention

    if now is not None and not dry_run:
        raise OrchestraError("--now only previews: use it with --dry-run")
    ctx = context()
    report = retention.by_hand(ctx, now=gc_view.parse_now(now) if now is not None else None, dry_run=dry_run)
    settings = ctx.settings.retention
    gc_view.report(report, settings.keep_finished_days, settings.purge_outputs)


@app.command("status")
def status_cmd(as_json: JsonOption = False) -> None:
    """Is the scheduler alive (heartbeat, last cycle, lease holder); slots per queue; queued and running
    per user; holds; the Orchestra version. Any user may run it."""
    from orchestra.cli import views
    from orchestra.services import status

    report = status.status(context())
    if as_json:
        print_json(jsonout.status_report(report))
    else:
        views.status(report)
    views.scheduler_warning(report.scheduler.warning)


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="login name: the user's OS login (peer authentication)")],
    admin: Annotated[bool, typer.Option("--admin", help="member of orchestra_admins")] = False,
    scheduler: Annotated[bool, typer.Option("--scheduler", help="may run the scheduler service")] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read a password (for TCP logins) from stdin")] = False,
    password_env: Annotated[Optional[str], typer.Option("--password-env", metavar="VAR", help="take the password from environment variable VAR (containers)")] = None,
    email: Annotated[Optional[str], typer.Option("--email", help="where mails about the user's tasks go")] = None,
) -> None:
    """Create or update a user's PostgreSQL login role and grant the Orchestra groups (admins only)."""
    from orchestra.notify import contact

    if email is not None:
        contact.check_email(email)  # before the role is made: a bad address changes nothing
    if password_stdin and password_env:
        raise OrchestraError("give the password one way: --password-stdin or --password-env, not both")
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise OrchestraError("--password-stdin read an empty line; pipe the password, e.g. `pass show db | orchestra user add ...`")
    elif password_env:
        password = os.environ.get(password_env)
        if not password:
            raise OrchestraError(f"--password-env {password_env}: that environment variable is not set or empty; set it")
    ctx = context()
    added = roles.add_user(ctx, name, admin=admin, scheduler=scheduler, password=password)
    if email is not None:
        contact.set_contact(ctx, added, email=email)
    for line in roles.how_to_connect(ctx, added):
        console.print(line, markup=False)


@user_app.command("remove")
def user_remove(name: Annotated[str, typer.Argument(help="login name")]) -> None:
    """Drop a user's login role (admins only); their tasks, datasets and usage stay."""
    ctx = context()
    dropped = roles.remove_user(ctx, name)
    console.print(f"removed the login role {name}; its tasks and datasets stay" if dropped
                  else f"{name} has no login role; nothing to remove", markup=False)


@user_app.command("list")
def user_list(
    fmt: Annotated[Optional[str], typer.Option("--format", "-o", metavar="COLUMNS", help=(
        "columns to show, comma-separated; any of: user, login, groups, share, cap"))] = None,
    noheader: NoHeaderOption = False,
    as_json: JsonOption = False,
) -> None:
    """Users with their roles, groups, share and cap."""
    rows = roles.list_users(context())
    if as_json:
        print_json(rows)
        return
    emit(tables.users(rows), fmt, noheader)


@user_app.command("set")
def user_set(
    name: Annotated[str, typer.Argument(help="user login name")],
    share: Annotated[Optional[float], typer.Option("--share", help="fair-share weight (default 1)")] = None,
    max_running: Annotated[Optional[int], typer.Option("--max-running", help="cap on running jobs (0: none)")] = None,
    email: Annotated[Optional[str], typer.Option("--email", help="where mails about the user's tasks go (\"\" removes it)")] = None,
    notify: Annotated[Optional[bool], typer.Option("--notify/--no-notify", help="mail the user when their tasks end")] = None,
) -> None:
    """Set a user's share, running cap and e-mail settings (admins only)."""
    from orchestra.notify import contact

    if share is not None and share <= 0:
        raise OrchestraError("--share must be greater than 0")
    if max_running is not None and max_running < 0:
        raise OrchestraError("--max-running must be 0 (no cap) or more")
    if email:
        contact.check_email(email)
    ctx = context()
    share_now, cap = roles.set_user(ctx, name, share=share, max_running=max_running)
    line = f"{name}: share {share_now:g}, max running {cap or 'no cap'}"
    if email is not None or notify is not None:
        info = contact.set_contact(ctx, name, email=email or None, clear=email == "", notify=notify)
        line += f", e-mail {info.email or 'none'}, notices {'on' if info.notify else 'off'}"
    console.print(line, markup=False)


@app.command("simulate")
def simulate(
    trace: Annotated[str, typer.Argument(help="workload trace: .toml, .json or .csv (see examples/traces/)")],
    csv_out: Annotated[Optional[str], typer.Option("--csv", help="write time,user,running,queued,usage")] = None,
    png_out: Annotated[Optional[str], typer.Option("--png", help="chart of running slots (needs matplotlib)")] = None,
    cycle: Annotated[Optional[str], typer.Option("--cycle", help="seconds between cycles (default: trace's)")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="stop at this simulated time, e.g. 6h")] = None,
    every: Annotated[Optional[int], typer.Option("--every", help="print one table row every N cycles")] = None,
    slots: Annotated[Optional[int], typer.Option("--slots", help="slots of a one-queue trace's queue")] = None,
) -> None:
    """Replay a workload trace through the real scheduler cycle on a simulated clock (throwaway database)."""
    from orchestra import replay
    from orchestra.cli import views

    if png_out is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise OrchestraError("--png needs matplotlib (pip install matplotlib); --csv works without it") from None
    if every is not None and every < 1:
        raise OrchestraError("--every must be at least 1")
    if slots is not None and slots < 0:
        raise OrchestraError("--slots must be 0 or more")
    for out in (csv_out, png_out):
        if out is not None and not Path(out).absolute().parent.is_dir():
            raise OrchestraError(f"cannot write {out}: its directory does not exist")
    loaded = replay.load_trace(trace, slots=slots)
    cycle_s = replay.seconds(cycle, "--cycle") if cycle is not None else None
    if cycle_s is not None and cycle_s <= 0:
        raise OrchestraError("--cycle must be longer than zero")
    until_s = replay.seconds(until, "--until") if until is not None else None
    console.print(f"simulating {trace}: {len(loaded.users)} users, {len(loaded.tasks)} tasks, "
                  f"{sum(t.jobs for t in loaded.tasks):,} jobs, {loaded.slots} slots "
                  f"({', '.join(f'{q.name} {q.slots}' for q in loaded.queues)})", markup=False)
    result = replay.replay(loaded, cycle=cycle_s, until=until_s)
    views.simulation(result, every or loaded.sample or None)
    for out, write in ((csv_out, result.write_csv), (png_out, result.write_png)):
        if out:
            try:
                write(out)
            except OSError as exc:
                raise OrchestraError(f"cannot write {out}: {exc.strerror}") from None
            console.print(f"wrote {out}", markup=False)


def main() -> None:
    run(app)
