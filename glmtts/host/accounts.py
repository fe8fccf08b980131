"""System users and groups. Against a directory tree (offline) the account database is
the tree's /etc/passwd and /etc/group, and the tools get --prefix."""

import grp
import pwd

from .seam import changes, reads


class Accounts:
    def _db(self, name):
        if not self.offline:
            return None
        f = self.path("/etc/%s" % name)
        return [line.split(":") for line in f.read_text().splitlines() if line] if f.exists() else []

    def _id(self, table, lookup, name):
        """The numeric id of ``name`` in /etc/passwd or /etc/group (``table``): this
        machine's database through ``lookup``, or the tree's file when offline; None if
        there is no such entry."""
        db = self._db(table)
        if db is None:
            try:
                return lookup(name)[2]
            except KeyError:
                return None
        return next((int(r[2]) for r in db if r[0] == name), None)

    @reads
    def user_id(self, name):
        return self._id("passwd", pwd.getpwnam, name)

    @reads
    def group_id(self, name):
        return self._id("group", grp.getgrnam, name)

    def _prefix(self):
        return ["--prefix", str(self.root)] if self.offline else []

    @changes("accounts")
    def add_group(self, name):
        self.run_checked(["groupadd", "--system"] + self._prefix() + [name])

    @changes("accounts")
    def add_user(self, name, group, home):
        self.run_checked(["useradd", "--system", "--gid", group, "--home-dir", home, "--no-create-home",
                          "--shell", "/usr/sbin/nologin", "--comment", "GLM-TTS service"] + self._prefix() + [name])

    @changes("accounts")
    def del_user(self, name):
        self.run_checked(["userdel"] + self._prefix() + [name])

    @changes("accounts")
    def del_group(self, name):
        self.run_checked(["groupdel"] + self._prefix() + [name])
