"""exchangelib (real client, Basic auth) against `ews-gateway demo`.

Usage: python3 exchangelib_demo.py EWS_URL SIM_BASE_URL
Each scenario asserts what the library returns or raises; the simulator's request log
(`/_sim/requests`) shows what reached "Exchange".
"""
import json
import sys
import unittest
import urllib.request
import uuid

from exchangelib import DELEGATE, IMPERSONATION, Account, Configuration, Credentials, Message
from exchangelib.errors import ErrorImpersonateUserDenied, UnauthorizedError
from exchangelib.transport import BASIC

EWS_URL = SIM_URL = None


def account(login, password, mailbox=None, access_type=DELEGATE):
    cfg = Configuration(
        service_endpoint=EWS_URL,
        credentials=Credentials(login, password),
        auth_type=BASIC,
        max_connections=4,
    )
    return Account(mailbox or login, config=cfg, autodiscover=False, access_type=access_type)


def sim_requests():
    with urllib.request.urlopen(f"{SIM_URL}/_sim/requests") as resp:
        return json.load(resp)


def clear_sim_requests():
    req = urllib.request.Request(f"{SIM_URL}/_sim/requests", method="DELETE")
    urllib.request.urlopen(req).close()


class Demo(unittest.TestCase):
    def test_alice_lists_her_inbox(self):
        alice = account("alice@contoso.example", "alice-demo-pass")
        subjects = [m.subject for m in alice.inbox.all().order_by("-datetime_received")]
        self.assertIn("Quarterly report", subjects)

    def test_alice_sends_to_bob_and_bob_finds_it(self):
        subject = f"Hello Bob {uuid.uuid4()}"
        alice = account("alice@contoso.example", "alice-demo-pass")
        Message(account=alice, subject=subject, body="Sent through ews-gateway",
                to_recipients=["bob@contoso.example"]).send_and_save()
        bob = account("bob@contoso.example", "bob-demo-pass")
        found = [m.subject for m in bob.inbox.all()]
        self.assertIn(subject, found)
        sent = [m.subject for m in alice.sent.all()]
        self.assertIn(subject, sent)

    def test_archiver_reads_alice_through_impersonation(self):
        archiver = account("archiver@contoso.example", "archiver-demo-pass",
                           mailbox="alice@contoso.example", access_type=IMPERSONATION)
        subjects = [m.subject for m in archiver.inbox.all()]
        self.assertIn("Quarterly report", subjects)

    def test_alice_impersonating_bob_is_denied_and_nothing_arrives(self):
        clear_sim_requests()
        alice_as_bob = account("alice@contoso.example", "alice-demo-pass",
                               mailbox="bob@contoso.example", access_type=IMPERSONATION)
        with self.assertRaises(ErrorImpersonateUserDenied) as ctx:
            list(alice_as_bob.inbox.all())
        self.assertIn("bob@contoso.example", str(ctx.exception))
        bodies = [r["body"] for r in sim_requests() if "/ews/" in r["path"].lower()]
        self.assertFalse([b for b in bodies if "bob@contoso.example" in b],
                         "no request acting as bob may reach Exchange")

    def test_wrong_password_is_unauthorized(self):
        with self.assertRaises(UnauthorizedError):
            list(account("alice@contoso.example", "wrong").inbox.all())


if __name__ == "__main__":
    EWS_URL, SIM_URL = sys.argv[1], sys.argv[2]
    result = unittest.main(argv=sys.argv[:1], verbosity=2, exit=False).result
    failed = len(result.failures) + len(result.errors)
    print(f"exchangelib: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed or not result.testsRun else 0)
