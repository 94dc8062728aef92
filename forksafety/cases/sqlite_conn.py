"""Case: a stdlib ``sqlite3`` connection opened (and written) before the fork.

sqlite.org, "How To Corrupt An SQLite Database File", section 2.6: do not
carry an open database connection across a fork(); POSIX advisory locks are
not inherited, so parent and child can both believe they hold them. Nothing
hangs: the measured outcome is PASS, the verdict RISK.

WARNING: importing this module opens a database file (on purpose).
"""

import sqlite3

from forksafety.cases import scratch_dir

DATABASE = scratch_dir() / "notes.sqlite3"
connection = sqlite3.connect(DATABASE)
connection.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")
connection.execute("INSERT INTO notes VALUES ('from the parent')")
connection.commit()


def use() -> int:
    """Insert a row from the child; return the number of rows."""
    connection.execute("INSERT INTO notes VALUES ('from the child')")
    connection.commit()
    return connection.execute("SELECT COUNT(*) FROM notes").fetchone()[0]
