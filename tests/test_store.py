import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

from appliance.actions.alarms import AlarmBook
from appliance.actions.decide import Decider
from appliance.core import DeadLetter, DeadLetterCode, PointMode, Reading, Score
from appliance.core.clock import AgeCutoff
from appliance.store import Store, open_reader
from appliance.store.store import SCHEMA_VERSION
from tests.support.wait import wait_until


def test_readings_are_stored_once_and_callbacks_follow_commit(tmp_path):
    st = Store(tmp_path / "a.db")
    st.start()
    acked = []
    for i in range(100):
        st.put_reading(Reading("p", "a", 1000.0 + i, float(i)))
        st.put_reading(Reading("p", "a", 1000.0 + i, float(i)))  # redelivered duplicate
        st.after_commit(lambda i=i: acked.append(i))
    st.put_dead_letter(DeadLetter("plant/p/a", b"xx", DeadLetterCode.BAD_JSON, "Expecting value", time.time()))
    assert st.flush()
    assert acked == list(range(100))
    c = st.counts()
    assert c["readings"] == 100 and c["dead_letters"] == 1
    st.close()


def test_group_commit_acknowledges_only_what_is_on_disk(tmp_path):
    # A lingering writer still runs each callback after the commit that holds its readings.
    st = Store(tmp_path / "a.db", commit_linger_s=0.01, commit_linger_items=16)
    st.start()
    seen = []

    def check(i):
        conn = open_reader(st.path)
        seen.append(conn.execute("SELECT COUNT(*) FROM readings WHERE ts <= ?", (1000.0 + i,)).fetchone()[0] == i + 1)
        conn.close()

    for i in range(40):
        st.put_reading(Reading("p", "a", 1000.0 + i, float(i)))
        st.after_commit(lambda i=i: check(i))
        if i % 7 == 0:
            time.sleep(0.002)  # some arrive alone, some in bursts
    assert st.flush()
    assert seen == [True] * 40
    st.close()


def lingering(st: Store) -> bool:
    """The writer is waiting for more to commit with what it holds."""
    return st._linger_need is not None


def test_a_burst_ends_the_commit_linger(tmp_path):
    # An hour's linger: only the burst reaching commit_linger_items can let the commit through.
    st = Store(tmp_path / "a.db", commit_linger_s=3600.0, commit_linger_items=8)
    st.start()
    done = threading.Event()
    st.put_reading(Reading("p", "a", 1000.0, 1.0))
    wait_until(lambda: lingering(st), what="the writer to take the first reading and linger for more")
    for i in range(1, 8):
        st.put_reading(Reading("p", "a", 1000.0 + i, 1.0))
    st.after_commit(done.set)
    assert done.wait(60)
    assert st.counts()["readings"] == 8
    st.put_reading(Reading("p", "a", 2000.0, 1.0))
    wait_until(lambda: lingering(st), what="the writer lingering again")  # close() must not wait it out
    st.close()
    assert st.counts()["readings"] == 9


def test_the_linger_backs_off_when_arrivals_stall(tmp_path):
    # One message at a time, each waiting for its ack (a broker with one message in flight):
    # lingering would only slow it down, so after two fruitless waits the writer stops.
    st = Store(tmp_path / "a.db", commit_linger_s=0.2, commit_linger_items=1000)
    st.start()
    for i in range(12):
        acked = threading.Event()
        st.put_reading(Reading("p", "a", 1000.0 + i, 1.0))
        st.after_commit(acked.set)
        assert acked.wait(60)
    assert st.committed_batches >= 12
    assert st.lingers <= 4  # without the back-off, all 12 would have lingered
    st.close()


def test_a_steady_trickle_is_grouped_and_the_writer_rests_when_it_stops(tmp_path):
    # At a steady rate each wait starts as the last commit ends (no wake-up for the first item);
    # once a wait gathers nothing the writer goes back to sleeping until something comes.
    st = Store(tmp_path / "a.db", commit_linger_s=0.02, commit_linger_items=10_000)
    st.start()
    acked = []
    for i in range(60):
        st.put_reading(Reading("p", "a", 1000.0 + i, 1.0))
        st.after_commit(lambda i=i: acked.append(i))
        time.sleep(0.002)
    assert st.flush()
    assert acked == list(range(60))
    assert st.counts()["readings"] == 60
    assert st.committed_batches < 60  # grouped: some commits held several messages
    resting = st.lingers
    time.sleep(0.3)  # fifteen linger times with nothing queued
    assert st.lingers <= resting + 1  # at most the one wait that found nothing, no spinning
    st.put_reading(Reading("p", "a", 5000.0, 1.0))
    assert st.flush()
    assert st.counts()["readings"] == 61
    st.close()


def test_alarm_events_and_restore(tmp_path):
    st = Store(tmp_path / "a.db")
    st.start()
    book = AlarmBook(Decider(raise_k=1, raise_n=1, clear_n=1))
    for e in book.on_score(Score("p", 5.0, 3.0, 1.0, {"a": 1.0})):
        st.put_alarm_event(e)
    for e in book.acknowledge("p", "ana"):
        st.put_alarm_event(e)
    st.flush()
    opened = st.open_alarms()
    assert len(opened) == 1 and opened[0].acked_by == "ana" and opened[0].active
    conn = open_reader(st.path)
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM alarm_events ORDER BY seq")]
    assert kinds == ["raised", "acknowledged"]
    st.close()


def test_mode_changes_are_their_own_records_and_modes_survive_a_restart(tmp_path):
    st = Store(tmp_path / "a.db")
    st.start()
    book = AlarmBook(Decider(raise_k=1, raise_n=1, clear_n=1), clock=lambda: 100.0)
    book.ensure("quiet")
    for m in book.set_mode("quiet", "suppressed", "ana", "asset stopped"):  # no alarm yet
        st.put_mode_change(m)
    for e in book.on_score(Score("p", 5.0, 3.0, 1.0, {"a": 1.0})):
        st.put_alarm_event(e)
    for m in book.shelve("p", "bo", 600):
        st.put_mode_change(m)
    assert st.flush()
    assert st.point_modes() == {"quiet": (PointMode.SUPPRESSED, None), "p": (PointMode.SHELVED, 700.0)}
    (alarm,) = st.open_alarms()
    assert alarm.state.value == "shelved"
    conn = open_reader(st.path)
    rows = conn.execute("SELECT asset, event, mode, previous, user, alarm_id FROM mode_changes ORDER BY seq").fetchall()
    assert [tuple(r) for r in rows] == [("quiet", "suppressed", "suppressed", "in_service", "ana", None),
                                        ("p", "shelved", "shelved", "in_service", "bo", alarm.id)]
    assert conn.execute("SELECT COUNT(*) FROM alarms").fetchone()[0] == 1  # no stand-in alarm rows
    st.close()


V1_SCHEMA = """
CREATE TABLE readings (id INTEGER PRIMARY KEY, asset TEXT NOT NULL, sensor TEXT NOT NULL, ts REAL NOT NULL,
    value REAL, quality INTEGER NOT NULL, historical INTEGER NOT NULL, received REAL NOT NULL,
    UNIQUE (asset, sensor, ts));
CREATE TABLE scores (id INTEGER PRIMARY KEY, asset TEXT NOT NULL, t_end REAL NOT NULL, value REAL NOT NULL,
    threshold REAL NOT NULL, contributions TEXT NOT NULL, model_version TEXT NOT NULL,
    historical INTEGER NOT NULL, received REAL NOT NULL, UNIQUE (asset, t_end));
CREATE TABLE alarms (id TEXT PRIMARY KEY, asset TEXT NOT NULL, level TEXT NOT NULL, state TEXT NOT NULL,
    active INTEGER NOT NULL, start REAL NOT NULL, end REAL, peak_score REAL NOT NULL, top_sensors TEXT NOT NULL,
    acked_by TEXT, shelved_until REAL, historical INTEGER NOT NULL, updated REAL NOT NULL);
CREATE TABLE alarm_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, alarm_id TEXT NOT NULL, kind TEXT NOT NULL,
    ts REAL NOT NULL, user TEXT, note TEXT, snapshot TEXT NOT NULL, UNIQUE (alarm_id, kind, ts));
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, source TEXT NOT NULL, payload BLOB NOT NULL,
    reason TEXT NOT NULL, received_at REAL NOT NULL);
CREATE INDEX dead_letters_reason ON dead_letters (reason);
CREATE TABLE point_modes (asset TEXT PRIMARY KEY, mode TEXT NOT NULL, shelved_until REAL, updated REAL NOT NULL);
INSERT INTO alarms VALUES ('a1', 'p', 'anomaly', 'shelved', 1, 10.0, NULL, 3.5, '["a"]', NULL, 900.0, 0, 11.0);
INSERT INTO alarms VALUES ('point-q', 'q', 'normal', 'suppressed', 0, 5.0, NULL, 0.0, '[]', NULL, NULL, 0, 5.0);
INSERT INTO alarm_events (alarm_id, kind, ts, user, note, snapshot) VALUES
    ('a1', 'raised', 10.0, NULL, '', '{"alarm": {"asset": "p", "peak_score": 3.5}}'),
    ('a1', 'shelved', 12.0, 'ana', 'cleaning', '{"alarm": {"asset": "p", "shelved_until": 900.0}}'),
    ('point-q', 'suppressed', 5.0, 'bo', '', '{"alarm": {"asset": "q", "shelved_until": null}}');
INSERT INTO dead_letters (source, payload, reason, received_at) VALUES
    ('plant/p/a', X'7B', 'not_json: Expecting value: line 1', 1.0), ('t', X'00', 'weird', 2.0);
INSERT INTO point_modes VALUES ('p', 'shelved', 900.0, 12.0), ('q', 'suppressed', NULL, 5.0);
"""


def test_a_store_from_the_previous_release_is_migrated(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(V1_SCHEMA)
    conn.close()
    st = Store(db)
    (alarm,) = st.open_alarms()
    assert alarm.id == "a1" and alarm.peak_ratio == 3.5  # the stand-in 'point-q' row is gone
    assert st.point_modes()["q"] == (PointMode.SUPPRESSED, None)
    r = open_reader(db)
    assert r.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [tuple(x) for x in r.execute("SELECT code, detail FROM dead_letters ORDER BY id")] == [
        ("not_json", "Expecting value: line 1"), ("weird", "")]
    peaks = r.execute("SELECT kind, json_extract(snapshot, '$.alarm.peak_ratio') FROM alarm_events")
    assert [tuple(x) for x in peaks] == [("raised", 3.5)]
    assert [tuple(x) for x in r.execute("SELECT asset, event, mode, user, alarm_id FROM mode_changes ORDER BY ts")] == [
        ("q", "suppressed", "suppressed", "bo", None), ("p", "shelved", "shelved", "ana", "a1")]
    st.start()
    st.put_dead_letter(DeadLetter("x", b"", DeadLetterCode.BAD_TS, "no", 3.0))
    assert st.flush()
    st.close()
    Store(db)  # opening a current store again changes nothing


def test_retention_keeps_newest(tmp_path):
    st = Store(tmp_path / "a.db", max_readings=1000)
    st.start()
    for i in range(3000):
        st.put_reading(Reading("p", "a", 1000.0 + i, float(i)))
    st.flush()
    conn = sqlite3.connect(st.path, isolation_level=None)
    st._retention(conn)
    conn.close()
    rows = open_reader(st.path).execute("SELECT MIN(ts), COUNT(*) FROM readings").fetchone()
    assert rows[1] == 1000 and rows[0] == 3000.0
    st.close()



def test_a_clock_stepped_forward_does_not_age_the_rows_of_this_run(tmp_path):
    # A gateway without a real-time clock, stepped forward 90 days by NTP a minute after it started.
    st = Store(tmp_path / "a.db", retention_days=7)
    start = time.time()
    clock = {"wall": start, "mono": 0.0}
    st._age_cutoff = AgeCutoff(st.retention_s, wall=lambda: clock["wall"], monotonic=lambda: clock["mono"])
    st.start()
    for i in range(10):
        st.put_reading(Reading("p", "a", start + i, float(i)))
    st.flush()
    conn = sqlite3.connect(st.path, isolation_level=None)

    def kept(wall_s, mono_s):
        clock.update(wall=start + wall_s, mono=mono_s)
        st._retention(conn)
        return open_reader(st.path).execute("SELECT COUNT(*) FROM readings").fetchone()[0]

    day = 86400.0
    assert kept(90 * day, 60.0) == 10  # a minute into the run: nothing it received is a week old
    st.put_reading(Reading("p", "a", start + 8 * day, 0.0))  # eight days on by the data's own time too
    st.flush()
    assert kept(98 * day, 8 * day) == 1  # eight days into the run (by the monotonic clock) the week is over
    conn.close()
    st.close()


def test_a_clock_stepped_forward_ages_no_row_whose_own_time_is_within_the_week_of_the_newest(tmp_path):
    """A gateway restarted with its wall clock 90 days ahead (a bad time source, or an RTC-less board's
    clock set wrong): the wall clock alone would call every row of earlier runs 90 days old; the data's
    own times say a week of it is not, until newer data comes."""
    day = 86400.0
    db = tmp_path / "a.db"
    start = time.time()
    earlier = Store(db, retention_days=7)
    earlier.start()
    for i in range(10):
        earlier.put_reading(Reading("p", "a", start - 3 * day + i, float(i)))
        earlier.put_score(Score("p", start - 3 * day + i, 0.5, 1.0, {"a": 1.0}, "m1"))
    assert earlier.flush()
    earlier.close()

    st = Store(db, retention_days=7)
    st._age_cutoff = AgeCutoff(st.retention_s, wall=lambda: start + 90 * day, monotonic=lambda: 0.0)
    st.start()
    conn = sqlite3.connect(st.path, isolation_level=None)

    def kept() -> tuple[int, int]:
        st._retention(conn)
        r = open_reader(st.path)
        return (r.execute("SELECT COUNT(*) FROM readings").fetchone()[0],
                r.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    assert kept() == (10, 10)
    # Data five days newer by its own time: the earlier rows are now eight days older than the newest.
    st.put_reading(Reading("p", "a", start + 5 * day, 1.0))
    st.put_score(Score("p", start + 5 * day, 0.5, 1.0, {"a": 1.0}, "m1"))
    assert st.flush()
    assert kept() == (1, 1)
    conn.close()
    st.close()


WRITER = textwrap.dedent("""
    import sys, time
    from appliance.core import Reading
    from appliance.store import Store
    st = Store(sys.argv[1]); st.start()
    i = 0
    while True:
        for _ in range(50):
            st.put_reading(Reading("p", "a", 1e9 + i, float(i))); i += 1
        n = i
        st.after_commit(lambda n=n: print(n, flush=True))
        time.sleep(0.001)
""")


def test_kill_9_loses_no_committed_reading_and_corrupts_nothing(tmp_path):
    db = tmp_path / "k.db"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True,
                         cwd=os.getcwd())
    acked = 0
    deadline = time.monotonic() + 30
    while acked < 20_000 and time.monotonic() < deadline:
        acked = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = conn.execute("SELECT COUNT(*), MAX(ts) FROM readings").fetchone()
    assert stored[0] >= acked  # everything acknowledged is there
    assert stored[0] == stored[1] - 1e9 + 1  # and it is a gap-free prefix
    st = Store(db)  # reopens and keeps writing
    st.start()
    st.put_reading(Reading("p", "a", 1.0, 1.0))
    assert st.flush()
    st.close()


def test_a_version_4_store_keeps_its_readings_under_the_time_ordered_key(tmp_path):
    db = tmp_path / "v4.db"
    Store(db)
    now = time.time()  # received now: retention keeps them
    conn = sqlite3.connect(db)
    conn.executescript(f"""
        DROP TABLE readings;
        CREATE TABLE readings (id INTEGER PRIMARY KEY, asset TEXT NOT NULL, sensor TEXT NOT NULL, ts REAL NOT NULL,
            value REAL, quality INTEGER NOT NULL, historical INTEGER NOT NULL, received REAL NOT NULL,
            UNIQUE (asset, sensor, ts));
        INSERT INTO readings VALUES (7, 'p', 'b', 2.0, 1.5, 0, 0, {now}), (9, 'p', 'a', 1.0, NULL, 2, 1, {now});
        PRAGMA user_version = 4;
    """)
    conn.close()
    st = Store(db)
    r = open_reader(db)
    assert r.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [tuple(x) for x in r.execute("SELECT * FROM readings ORDER BY id")] == [
        (7, "p", "b", 2.0, 1.5, 0, 0, now), (9, "p", "a", 1.0, None, 2, 1, now)]
    key = r.execute("SELECT group_concat(name) FROM pragma_index_info("
                    "(SELECT name FROM pragma_index_list('readings') WHERE \"unique\"))").fetchone()[0]
    assert key == "ts,asset,sensor"
    assert not r.execute("SELECT 1 FROM sqlite_master WHERE name = 'readings_v4'").fetchone()
    st.start()
    st.put_reading(Reading("p", "b", 2.0, 9.9))  # a redelivery of a migrated reading is still stored once
    st.put_reading(Reading("p", "b", 3.0, 2.5))
    assert st.flush()
    st.close()
    assert [x["ts"] for x in st.reader.readings("p", "b")] == [3.0, 2.0]
    assert st.reader.readings("p", "b")[1]["value"] == 1.5


def test_a_version_5_store_keeps_its_scores_under_the_time_ordered_key(tmp_path):
    db = tmp_path / "v5.db"
    Store(db)
    now = time.time()  # received now: retention keeps them
    conn = sqlite3.connect(db)
    conn.executescript(f"""
        DROP TABLE scores;
        CREATE TABLE scores (id INTEGER PRIMARY KEY, asset TEXT NOT NULL, t_end REAL NOT NULL, value REAL NOT NULL,
            threshold REAL NOT NULL, contributions TEXT NOT NULL, model_version TEXT NOT NULL,
            historical INTEGER NOT NULL, received REAL NOT NULL, UNIQUE (asset, t_end));
        INSERT INTO scores VALUES (4, 'p', 20.0, 2.0, 4.0, '{{"a": 1.0}}', 'm1', 0, {now}),
                                  (6, 'q', 10.0, 1.0, 4.0, '{{}}', 'm1', 1, {now});
        PRAGMA user_version = 5;
    """)
    conn.close()
    st = Store(db)
    r = open_reader(db)
    assert r.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [tuple(x) for x in r.execute("SELECT * FROM scores ORDER BY id")] == [
        (4, "p", 20.0, 2.0, 4.0, '{"a": 1.0}', "m1", 0, now), (6, "q", 10.0, 1.0, 4.0, "{}", "m1", 1, now)]
    key = r.execute("SELECT group_concat(name) FROM pragma_index_info("
                    "(SELECT name FROM pragma_index_list('scores') WHERE \"unique\"))").fetchone()[0]
    assert key == "t_end,asset"
    assert not r.execute("SELECT 1 FROM sqlite_master WHERE name = 'scores_v5'").fetchone()
    st.start()
    st.put_score(Score("p", 20.0, 9.0, 4.0, {"a": 1.0}, "m1"))  # a redelivery of a migrated score: stored once
    st.put_score(Score("p", 30.0, 3.0, 4.0, {"a": 1.0}, "m1"))
    assert st.flush()
    st.close()
    assert [(x["t_end"], x["value"]) for x in st.reader.scores("p")] == [(30.0, 3.0), (20.0, 2.0)]
    assert st.reader.score_buckets("p", 0.0, 60.0, 60.0) == [(0.0, 0.75, 2)]


def test_a_store_with_other_pages_is_rewritten_once_with_the_configured_size(tmp_path):
    db = tmp_path / "a.db"
    st = Store(db)
    st.start()
    st.put_reading(Reading("p", "a", 1.0, 1.0))
    assert st.flush()
    st.close()
    assert open_reader(db).execute("PRAGMA page_size").fetchone()[0] == 4096  # SQLite's default
    st = Store(db, page_size=1024)
    r = open_reader(db)
    assert r.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert r.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert st.reader.readings("p", "a")[0]["value"] == 1.0


def test_a_pause_in_arrivals_ends_the_commit_linger(tmp_path):
    # A broker at its in-flight limit sends nothing more until we acknowledge: with an hour's linger
    # and far more items needed than it sends, each group is still committed once its arrivals pause.
    st = Store(tmp_path / "a.db", commit_linger_s=3600.0, commit_linger_items=10_000, commit_linger_gap_s=0.05)
    st.start()
    for group in range(5):
        acked = threading.Event()
        for i in range(20):
            st.put_reading(Reading("p", "a", 1000.0 + group * 20 + i, 1.0))
            st.after_commit(acked.set)
        assert acked.wait(60)
    assert st.counts()["readings"] == 100
    st.close()
