import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from appliance.actions.alarms import AlarmBook
from appliance.actions.decide import Decider
from appliance.core import DeadLetter, Reading, Score
from appliance.store import Store, open_reader


def test_readings_are_stored_once_and_callbacks_follow_commit(tmp_path):
    st = Store(tmp_path / "a.db")
    st.start()
    acked = []
    for i in range(100):
        st.put_reading(Reading("p", "a", 1000.0 + i, float(i)))
        st.put_reading(Reading("p", "a", 1000.0 + i, float(i)))  # redelivered duplicate
        st.after_commit(lambda i=i: acked.append(i))
    st.put_dead_letter(DeadLetter("plant/p/a", b"xx", "not_json: bad", time.time()))
    assert st.flush()
    assert acked == list(range(100))
    c = st.counts()
    assert c["readings"] == 100 and c["dead_letters"] == 1
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
    assert len(opened) == 1 and opened[0][0].acked_by == "ana" and opened[0][0].active
    conn = open_reader(st.path)
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM alarm_events ORDER BY seq")]
    assert kinds == ["raised", "acknowledged"]
    st.close()


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
    st.start(); st.put_reading(Reading("p", "a", 1.0, 1.0)); assert st.flush(); st.close()
