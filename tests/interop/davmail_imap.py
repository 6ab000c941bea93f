"""DavMail (real client, EWS mode, Basic auth) driven over IMAP, against `ews-gateway demo`.

Usage: python3 davmail_imap.py IMAP_PORT SIM_BASE_URL
DavMail listens on 127.0.0.1:IMAP_PORT and talks EWS to the gateway; the simulator's request log
(`/_sim/requests`) shows what reached "Exchange". Each scenario asserts what the IMAP server
(DavMail, i.e. the EWS answers it got through the gateway) returns.
"""
import email
import email.policy
import imaplib
import json
import re
import sys
import time
import unittest
import urllib.request
import uuid
import xml.etree.ElementTree as ET

IMAP_PORT = SIM_URL = None
T = "{http://schemas.microsoft.com/exchange/services/2006/types}"
ALICE = ("alice@contoso.example", "alice-demo-pass")


def sim_requests():
    with urllib.request.urlopen(f"{SIM_URL}/_sim/requests") as resp:
        return json.load(resp)




def connect(login=ALICE):
    imap = imaplib.IMAP4("127.0.0.1", IMAP_PORT, timeout=60)
    imap.login(*login)
    return imap


def ok(result):
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def subjects_in(imap, mailbox):
    ok(imap.select(f'"{mailbox}"'))
    uids = ok(imap.uid("search", None, "ALL"))[0].split()
    found = []
    for uid in uids:
        data = ok(imap.uid("fetch", uid, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
        header = next(part[1] for part in data if isinstance(part, tuple))
        found.append(email.message_from_bytes(header, policy=email.policy.default)["Subject"])
    return found


def new_message(subject, body):
    return (
        "From: Alice <alice@contoso.example>\r\n"
        "To: Bob <bob@contoso.example>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4()}@contoso.example>\r\n"
        "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


class DavMail(unittest.TestCase):
    def test_1_login_and_list_folders(self):
        imap = connect()
        folders = ok(imap.list())
        names = [re.search(rb'"([^"]*)"$', f).group(1).decode() for f in folders]
        for expected in ("INBOX", "Sent", "Drafts", "Trash", "Junk"):
            self.assertIn(expected, names)
        imap.logout()
        # DavMail never sends impersonation itself: the gateway added exactly one, for alice,
        # and swapped Basic for the app's Bearer token.
        posts = [r for r in sim_requests()
                 if r["path"].lower().startswith("/ews/") and r["method"] == "POST"]
        self.assertTrue(posts)
        for r in posts:
            auth = [v for n, v in r["headers"] if n == "authorization"]
            self.assertEqual(len(auth), 1)
            self.assertTrue(auth[0].startswith("Bearer "))
            envelope = ET.fromstring(r["body"].encode())
            acting = [e.findtext(f"{T}ConnectingSID/{T}PrimarySmtpAddress")
                      for e in envelope.iter(f"{T}ExchangeImpersonation")]
            self.assertEqual(acting, ["alice@contoso.example"])

    def test_2_select_and_fetch_a_message(self):
        imap = connect()
        exists = int(ok(imap.select("INBOX"))[0])
        self.assertGreaterEqual(exists, 3)
        uids = ok(imap.uid("search", None, 'SUBJECT "Quarterly report"'))[0].split()
        self.assertEqual(len(uids), 1, uids)
        data = ok(imap.uid("fetch", uids[0], "(BODY.PEEK[])"))
        raw = next(part[1] for part in data if isinstance(part, tuple))
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(msg["Subject"], "Quarterly report")
        texts = [p.get_content() for p in msg.walk() if p.get_content_type() == "text/plain"]
        self.assertTrue(any("the quarterly report is attached" in t for t in texts), texts)
        names = [p.get_filename() for p in msg.walk() if p.get_filename()]
        self.assertIn("report.csv", names)
        imap.logout()

    def test_3_append_then_find_it(self):
        subject = f"Appended through DavMail {uuid.uuid4()}"
        imap = connect()
        ok(imap.append("INBOX", None, None, new_message(subject, "appended body")))
        self.assertIn(subject, subjects_in(imap, "INBOX"))
        uids = ok(imap.uid("search", None, f'SUBJECT "{subject}"'))[0].split()
        self.assertEqual(len(uids), 1)
        raw = next(p[1] for p in ok(imap.uid("fetch", uids[0], "(BODY.PEEK[])")) if isinstance(p, tuple))
        self.assertIn(b"appended body", raw)
        imap.logout()

    def test_4_copy_to_another_folder(self):
        subject = f"Copied through DavMail {uuid.uuid4()}"
        imap = connect()
        ok(imap.append("INBOX", None, None, new_message(subject, "to be copied")))
        ok(imap.select("INBOX"))
        uids = ok(imap.uid("search", None, f'SUBJECT "{subject}"'))[0].split()
        self.assertEqual(len(uids), 1)
        ok(imap.uid("copy", uids[0], "Junk"))
        self.assertIn(subject, subjects_in(imap, "Junk"))
        self.assertIn(subject, subjects_in(imap, "INBOX"), "a copy leaves the original")
        imap.logout()

    def test_5_flag_seen(self):
        subject = f"Unread until flagged {uuid.uuid4()}"
        imap = connect()
        ok(imap.append("INBOX", None, None, new_message(subject, "mark me read")))
        ok(imap.select("INBOX"))
        uids = ok(imap.uid("search", None, f'SUBJECT "{subject}"'))[0].split()
        self.assertEqual(len(uids), 1)
        self.assertNotIn(rb"\Seen", ok(imap.uid("fetch", uids[0], "(FLAGS)"))[0])
        ok(imap.uid("store", uids[0], "+FLAGS", r"(\Seen)"))
        imap.logout()
        updates = [r["body"] for r in sim_requests() if "<m:UpdateItem" in r["body"]]
        self.assertTrue(updates, "the flag went to Exchange as an UpdateItem")
        # A fresh connection reads the flag back.
        imap = connect()
        ok(imap.select("INBOX"))
        self.assertIn(rb"\Seen", ok(imap.uid("fetch", uids[0], "(FLAGS)"))[0])
        imap.logout()

    def test_6_folder_create_move_expunge_delete(self):
        folder = f"Archive {uuid.uuid4().hex[:8]}"
        subject = f"To be archived {uuid.uuid4()}"
        imap = connect()
        ok(imap.create(f'"{folder}"'))
        names = [re.search(rb'"([^"]*)"$', f).group(1).decode() for f in ok(imap.list())]
        self.assertIn(folder, names)
        # Only mail folders are listed, as DavMail asks Exchange for them.
        self.assertNotIn("calendar", [n.lower() for n in names])
        ok(imap.append("INBOX", None, None, new_message(subject, "archive me")))
        ok(imap.select("INBOX"))
        uids = ok(imap.uid("search", None, f'SUBJECT "{subject}"'))[0].split()
        self.assertEqual(len(uids), 1)
        ok(imap.uid("move", uids[0], f'"{folder}"'))
        self.assertNotIn(subject, subjects_in(imap, "INBOX"))
        # The new folder holds exactly the moved message (not another folder's content).
        self.assertEqual(subjects_in(imap, folder), [subject])
        uid = ok(imap.uid("search", None, "ALL"))[0].split()[0]
        ok(imap.uid("store", uid, "+FLAGS", r"(\Deleted)"))
        ok(imap.expunge())
        self.assertEqual(subjects_in(imap, folder), [])
        ok(imap.select("INBOX"))
        ok(imap.delete(f'"{folder}"'))
        names = [re.search(rb'"([^"]*)"$', f).group(1).decode() for f in ok(imap.list())]
        self.assertNotIn(folder, names)
        imap.logout()

    def test_7_a_custom_folder_shows_its_own_messages(self):
        imap = connect()
        self.assertEqual(subjects_in(imap, "Projects"), ["Project Falcon kickoff"])
        imap.logout()

    def test_8_wrong_password_is_refused(self):
        imap = imaplib.IMAP4("127.0.0.1", IMAP_PORT, timeout=60)
        with self.assertRaises(imaplib.IMAP4.error):
            imap.login("alice@contoso.example", "wrong")
        imap.shutdown()


if __name__ == "__main__":
    IMAP_PORT, SIM_URL = int(sys.argv[1]), sys.argv[2]
    started = time.monotonic()
    result = unittest.main(argv=sys.argv[:1], verbosity=2, exit=False).result
    failed = len(result.failures) + len(result.errors)
    print(f"davmail: {result.testsRun - failed} passed, {failed} failed "
          f"in {time.monotonic() - started:.1f} s")
    sys.exit(1 if failed or not result.testsRun else 0)
