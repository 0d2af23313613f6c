"""Schema as code: sqlite-utils Migrations, applied at start before the API serves.

Each migration runs in one transaction with its bookkeeping row, so a failure rolls back and
stays pending. Never edit an applied migration; add a new one.
"""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database, Migrations

migrations = Migrations("appliance")

_CORE = """
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE accounts (
    sid TEXT PRIMARY KEY,
    parent_sid TEXT REFERENCES accounts(sid),
    organization_sid TEXT NOT NULL,
    friendly_name TEXT NOT NULL,
    email_address TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    role TEXT NOT NULL,
    auth_token TEXT NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE INDEX accounts_parent ON accounts(parent_sid);
CREATE INDEX accounts_friendly_name ON accounts(friendly_name);

CREATE TABLE clients (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL REFERENCES accounts(sid),
    friendly_name TEXT NOT NULL,
    login TEXT NOT NULL UNIQUE,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    realm TEXT NOT NULL,
    status INTEGER NOT NULL,
    voice_url TEXT,
    voice_method TEXT NOT NULL,
    voice_fallback_url TEXT,
    voice_fallback_method TEXT NOT NULL,
    voice_application_sid TEXT,
    push_client_identity TEXT,
    api_version TEXT NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE INDEX clients_account ON clients(account_sid);

CREATE TABLE applications (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL REFERENCES accounts(sid),
    friendly_name TEXT NOT NULL,
    voice_caller_id_lookup INTEGER NOT NULL,
    rcml_url TEXT,
    kind TEXT,
    api_version TEXT NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE INDEX applications_account ON applications(account_sid);

CREATE TABLE incoming_phone_numbers (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL REFERENCES accounts(sid),
    friendly_name TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    voice_url TEXT, voice_method TEXT NOT NULL,
    voice_fallback_url TEXT, voice_fallback_method TEXT NOT NULL,
    status_callback TEXT, status_callback_method TEXT NOT NULL,
    voice_caller_id_lookup INTEGER NOT NULL,
    voice_application_sid TEXT,
    sms_url TEXT, sms_method TEXT NOT NULL,
    sms_fallback_url TEXT, sms_fallback_method TEXT NOT NULL,
    sms_application_sid TEXT,
    ussd_url TEXT, ussd_method TEXT NOT NULL,
    ussd_fallback_url TEXT, ussd_fallback_method TEXT NOT NULL,
    ussd_application_sid TEXT,
    refer_url TEXT, refer_method TEXT NOT NULL,
    refer_application_sid TEXT,
    voice_capable INTEGER NOT NULL, sms_capable INTEGER NOT NULL,
    mms_capable INTEGER NOT NULL, fax_capable INTEGER NOT NULL,
    pure_sip INTEGER NOT NULL,
    api_version TEXT NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE UNIQUE INDEX numbers_phone_number ON incoming_phone_numbers(phone_number);
CREATE INDEX numbers_account ON incoming_phone_numbers(account_sid, phone_number);

CREATE TABLE gateways (
    sid TEXT PRIMARY KEY,
    friendly_name TEXT NOT NULL,
    user_name TEXT NOT NULL,
    password TEXT NOT NULL,
    proxy TEXT NOT NULL,
    register INTEGER NOT NULL,
    ttl INTEGER NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);

CREATE TABLE calls (
    sid TEXT PRIMARY KEY,
    instance_id TEXT,
    account_sid TEXT NOT NULL,
    parent_call_sid TEXT,
    "to" TEXT NOT NULL,
    "from" TEXT NOT NULL,
    phone_number_sid TEXT,
    status TEXT NOT NULL,
    start_time TEXT,
    end_time TEXT,
    duration INTEGER NOT NULL DEFAULT 0,
    price TEXT,
    price_unit TEXT NOT NULL DEFAULT 'USD',
    direction TEXT NOT NULL,
    answered_by TEXT,
    api_version TEXT NOT NULL,
    forwarded_from TEXT,
    caller_name TEXT,
    conference_sid TEXT,
    ring_duration INTEGER,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE INDEX calls_account_created ON calls(account_sid, date_created);
CREATE INDEX calls_parent ON calls(parent_call_sid);
CREATE INDEX calls_account_status ON calls(account_sid, status, date_created);
CREATE INDEX calls_account_start ON calls(account_sid, start_time);

CREATE TABLE sms_messages (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    "from" TEXT NOT NULL,
    "to" TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    direction TEXT NOT NULL,
    error_code INTEGER,
    error_message TEXT,
    price TEXT NOT NULL DEFAULT '0',
    price_unit TEXT NOT NULL DEFAULT 'USD',
    api_version TEXT NOT NULL,
    date_sent TEXT,
    status_callback TEXT,
    status_callback_method TEXT,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE INDEX sms_account_created ON sms_messages(account_sid, date_created);
CREATE INDEX sms_account_status ON sms_messages(account_sid, status, date_created);

CREATE TABLE recordings (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    call_sid TEXT,
    duration REAL NOT NULL,
    file_path TEXT NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE INDEX recordings_account_created ON recordings(account_sid, date_created);
CREATE INDEX recordings_call ON recordings(call_sid);

CREATE TABLE notifications (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    call_sid TEXT,
    log INTEGER NOT NULL,
    error_code INTEGER NOT NULL,
    more_info TEXT NOT NULL,
    message_text TEXT NOT NULL,
    message_date TEXT NOT NULL,
    request_url TEXT NOT NULL,
    request_method TEXT NOT NULL,
    request_variables TEXT NOT NULL,
    response_headers TEXT NOT NULL,
    response_body TEXT NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE INDEX notifications_account_created ON notifications(account_sid, date_created);

-- Per-account row counts kept by triggers, so an unfiltered page's `total` costs one lookup
-- instead of a COUNT(*) that grows with the table.
CREATE TABLE row_counts (
    tbl TEXT NOT NULL,
    account_sid TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (tbl, account_sid)
) WITHOUT ROWID;
"""

COUNTED_TABLES = ("calls", "sms_messages", "recordings", "notifications",
                  "incoming_phone_numbers")


def _count_triggers(table: str) -> str:
    return f"""
CREATE TRIGGER {table}_count_ins AFTER INSERT ON {table} BEGIN
    INSERT INTO row_counts(tbl, account_sid, n) VALUES ('{table}', NEW.account_sid, 1)
    ON CONFLICT(tbl, account_sid) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER {table}_count_del AFTER DELETE ON {table} BEGIN
    UPDATE row_counts SET n = n - 1 WHERE tbl = '{table}' AND account_sid = OLD.account_sid;
END;
CREATE TRIGGER {table}_count_move AFTER UPDATE OF account_sid ON {table}
WHEN OLD.account_sid <> NEW.account_sid BEGIN
    UPDATE row_counts SET n = n - 1 WHERE tbl = '{table}' AND account_sid = OLD.account_sid;
    INSERT INTO row_counts(tbl, account_sid, n) VALUES ('{table}', NEW.account_sid, 1)
    ON CONFLICT(tbl, account_sid) DO UPDATE SET n = n + 1;
END;
"""


def _run_script(db: Database, script: str) -> None:
    # executescript() would COMMIT the migration's transaction; run statement by statement.
    statement = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        statement += line
        if statement.strip() and _complete(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        db.execute(statement)


def _complete(statement: str) -> bool:
    return sqlite3.complete_statement(statement)


@migrations()
def m001_core(db: Database) -> None:
    _run_script(db, _CORE)
    for table in COUNTED_TABLES:
        _run_script(db, _count_triggers(table))


@migrations()
def m002_sip_bindings(db: Database) -> None:
    # Registrar bindings survive a restart: one row per (AoR, contact), the binding as JSON.
    _run_script(db, """
CREATE TABLE sip_bindings (
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    expires_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (aor, contact)
) WITHOUT ROWID;
""")


@migrations()
def m003_sms_queue(db: Database) -> None:
    # The durable SMS pipeline: outbound queue with per-part progress, the raw inbound PDUs
    # (idempotency key), fragments awaiting reassembly, and pending SmsUrl requests.
    _run_script(db, """
CREATE TABLE sms_outbox (
    sid TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    body TEXT NOT NULL,
    ucs2 INTEGER NOT NULL,
    status_report INTEGER NOT NULL,
    concat_ref INTEGER NOT NULL,
    x_headers TEXT NOT NULL,
    state TEXT NOT NULL,
    parts_total INTEGER NOT NULL DEFAULT 0,
    parts_done INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    accepted_at TEXT NOT NULL
);
CREATE INDEX sms_outbox_due ON sms_outbox(state, next_attempt_at);
CREATE TABLE sms_parts (
    sms_sid TEXT NOT NULL,
    part INTEGER NOT NULL,
    mr INTEGER,
    recipient TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status_code INTEGER,
    sent_at TEXT NOT NULL,
    PRIMARY KEY (sms_sid, part)
);
CREATE INDEX sms_parts_mr ON sms_parts(mr, sent_at);
CREATE TABLE sms_inbox_pdus (
    idx INTEGER NOT NULL,
    pdu_sha TEXT NOT NULL,
    pdu TEXT NOT NULL,
    sms_sid TEXT,
    note TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (idx, pdu_sha)
);
CREATE TABLE sms_fragments (
    sender TEXT NOT NULL,
    ref INTEGER NOT NULL,
    total INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    PRIMARY KEY (sender, ref, total, seq)
);
CREATE TABLE sms_inbound_jobs (
    sid TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL
);
ALTER TABLE sms_messages ADD COLUMN x_headers TEXT;
""")


@migrations()
def m004_conferences(db: Database) -> None:
    # Conferences (<Dial><Conference>) and who was in them; the calls row of a participant
    # also carries the conference's sid (calls.conference_sid, there since m001).
    _run_script(db, """
CREATE TABLE conferences (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    friendly_name TEXT NOT NULL,
    status TEXT NOT NULL,
    api_version TEXT NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE INDEX conferences_account_created ON conferences(account_sid, date_created);
CREATE INDEX conferences_account_status ON conferences(account_sid, status, date_created);
CREATE INDEX conferences_account_name ON conferences(account_sid, friendly_name);
CREATE TABLE conference_participants (
    conference_sid TEXT NOT NULL,
    call_sid TEXT NOT NULL,
    account_sid TEXT NOT NULL,
    muted INTEGER NOT NULL,
    start_conference_on_enter INTEGER NOT NULL,
    end_conference_on_exit INTEGER NOT NULL,
    connected INTEGER NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL,
    PRIMARY KEY (conference_sid, call_sid)
);
CREATE INDEX conference_participants_call ON conference_participants(call_sid);
""")
    _run_script(db, _count_triggers("conferences"))


@migrations()
def m005_calls_open(db: Database) -> None:
    # Store.open_calls (the CDRs a crash left open, read at every start) scanned the whole
    # calls table. Only live calls lack an end time, so this index holds a handful of rows
    # whatever the table's size; the query's own `end_time IS NULL` lets SQLite use it.
    _run_script(db, """
CREATE INDEX calls_open ON calls(status) WHERE end_time IS NULL;
""")


@migrations()
def m006_sms_inbound_handed(db: Database) -> None:
    # An inbound job whose app's reply (or client: forward) was queued: set in the transaction
    # that queues it, so a crash before the job is finished never runs the app again.
    _run_script(db, """
ALTER TABLE sms_inbound_jobs ADD COLUMN handed INTEGER NOT NULL DEFAULT 0;
""")


@migrations()
def m007_trunk_contacts(db: Database) -> None:
    # Behind NAT a gateway registers the public Contact its provider reported; a crash leaves
    # that binding at the provider, and the next start (maybe through another NAT port) must
    # know it to remove it. Runtime state, not configuration: it goes with its gateway.
    _run_script(db, """
CREATE TABLE trunk_contacts (
    gateway_sid TEXT PRIMARY KEY REFERENCES gateways(sid) ON DELETE CASCADE,
    host TEXT NOT NULL,
    port INTEGER NOT NULL
) WITHOUT ROWID;
""")


@migrations()
def m008_notifications_call(db: Database) -> None:
    # GET Calls/{sid}/Notifications (a CDR's subresource) and Notifications?CallSid= pick a
    # call's few rows out of all its account's notifications.
    _run_script(db, """
CREATE INDEX notifications_call ON notifications(call_sid);
""")


@migrations()
def m009_role_spelling(db: Database) -> None:
    # Versions before this one stored any Role string; permissions match the two roles'
    # exact spelling, so an account saved as "administrator" could do nothing, and once
    # phones were held to their account's role, its desk phones could no longer call out.
    _run_script(db, """
UPDATE accounts SET role = 'Administrator' WHERE lower(role) = 'administrator';
UPDATE accounts SET role = 'Developer' WHERE lower(role) = 'developer';
""")


@migrations()
def m010_sms_queue_turns(db: Database) -> None:
    # Each destination gets its messages in the order accepted, so the senders ask for each
    # destination's first queued message. A window over the whole queue cost ~50 ms at a
    # backlog of 20,000 on the store's only thread, per message sent; with these two
    # indexes the queue is read in accepted order and each candidate's "an earlier one is
    # queued" is one index probe (store/sms.py).
    _run_script(db, """
CREATE INDEX sms_outbox_turn ON sms_outbox(destination, state, accepted_at);
CREATE INDEX sms_outbox_order ON sms_outbox(state, accepted_at);
""")


GATEWAY_NAMES_INDEX = "gateways_friendly_name"


def ensure_unique_gateway_names(conn: sqlite3.Connection) -> list[str]:
    """Make gateway FriendlyNames unique in the database (routes and ``[inbound.sources]``
    name gateways by it), unless rows already share one: then nothing is changed and the
    shared names are returned, for a warning. Called at every open and after each gateway
    rename or delete, so the index comes as soon as the operator has renamed (or deleted)
    the duplicates an older version let in. Until then the service's own check still
    refuses any new duplicate. Not a migration: a migration runs once, and renaming the
    operator's gateways behind their back would silently change which one carries calls."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                    (GATEWAY_NAMES_INDEX,)).fetchone():
        return []
    shared = [r[0] for r in conn.execute(
        "SELECT friendly_name FROM gateways GROUP BY friendly_name HAVING count(*) > 1 "
        "ORDER BY friendly_name")]
    if not shared:
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {GATEWAY_NAMES_INDEX} "
                     "ON gateways(friendly_name)")
    return shared


def apply(db: Database) -> list[str]:
    """Apply pending migrations; returns the names applied now."""
    pending = [m.name for m in migrations.pending(db)]
    migrations.apply(db)
    return pending
