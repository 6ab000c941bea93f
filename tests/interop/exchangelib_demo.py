"""exchangelib (real client, Basic auth) against `ews-gateway demo --https`.

Usage: python3 exchangelib_demo.py EWS_URL SIM_BASE_URL CA_FILE
Each scenario asserts what the library returns or raises; the simulator's request log
(`/_sim/requests`) shows what reached "Exchange". The gateway serves HTTPS with a certificate
for localhost, 127.0.0.1, contoso.example and autodiscover.contoso.example signed by CA_FILE.
"""
import contextlib
import json
import os
import socket
import sys
import unittest
import urllib.parse
import urllib.request
import uuid
from unittest import mock

import dns.resolver
from exchangelib import DELEGATE, IMPERSONATION, Account, Configuration, Credentials, FileAttachment, Message
from exchangelib.autodiscover import clear_cache
from exchangelib.autodiscover.discovery import Autodiscovery
from exchangelib.errors import ErrorImpersonateUserDenied, UnauthorizedError
from exchangelib.properties import CreatedEvent, NewMailEvent
from exchangelib.transport import BASIC

EWS_URL = SIM_URL = CA_FILE = None


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


AUTODISCOVER_HOST = "autodiscover.contoso.example"


@contextlib.contextmanager
def autodiscover_names():
    """Makes this process see a DNS where `autodiscover.contoso.example` is the gateway (on 443)
    and the bare domain has no host, like a tenant whose web site is elsewhere. Records the DNS
    names asked and the (host, port) pairs connected to."""
    gateway = urllib.parse.urlsplit(EWS_URL)
    looked_up = {"dns": [], "connect": []}
    real_getaddrinfo = socket.getaddrinfo

    class Resolver:
        def resolve(self, qname, rdtype="A", **_kwargs):
            name = str(qname).rstrip(".").lower()
            looked_up["dns"].append(name)
            if name == AUTODISCOVER_HOST and rdtype == "A":
                return [gateway.hostname]
            raise dns.resolver.NXDOMAIN()

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.lower().endswith("contoso.example"):
            looked_up["connect"].append((host.lower(), int(port)))
            if host.lower() != AUTODISCOVER_HOST or int(port) != 443:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return real_getaddrinfo(gateway.hostname, gateway.port, *args, **kwargs)
        return real_getaddrinfo(host, port, *args, **kwargs)

    clear_cache()
    with mock.patch.object(Autodiscovery, "resolver", Resolver()), \
            mock.patch.object(socket, "getaddrinfo", getaddrinfo):
        try:
            yield looked_up
        finally:
            clear_cache()


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

    def test_paging_through_the_inbox(self):
        alice = account("alice@contoso.example", "alice-demo-pass")
        clear_sim_requests()
        qs = alice.inbox.all().order_by("-datetime_received")
        qs.page_size = 2
        subjects = [m.subject for m in qs]
        self.assertGreaterEqual(len(subjects), 3)
        self.assertEqual(len(subjects), len(set(subjects)), "pages must not overlap")
        finds = [r for r in sim_requests() if "<m:FindItem" in r["body"]]
        self.assertGreaterEqual(len(finds), 2, "more than one page was fetched")

    def test_read_a_message_with_attachments(self):
        alice = account("alice@contoso.example", "alice-demo-pass")
        m = alice.inbox.get(subject="Quarterly report")
        self.assertEqual([a.name for a in m.attachments], ["report.csv"])
        self.assertIn(b"quarter,revenue", m.attachments[0].content)

    def test_mark_read(self):
        alice = account("alice@contoso.example", "alice-demo-pass")
        m = alice.inbox.get(subject="Scanner: document 0042")
        m.is_read = True
        m.save(update_fields=["is_read"])
        self.assertTrue(alice.inbox.get(subject="Scanner: document 0042").is_read)

    def test_move_then_delete(self):
        bob = account("bob@contoso.example", "bob-demo-pass")
        subject = f"to be moved {uuid.uuid4()}"
        Message(account=bob, folder=bob.inbox, subject=subject, body="x").save()
        m = bob.inbox.get(subject=subject)
        m.move(bob.junk)
        self.assertEqual(bob.inbox.filter(subject=subject).count(), 0)
        moved = bob.junk.get(subject=subject)
        moved.delete()
        self.assertEqual(bob.junk.filter(subject=subject).count(), 0)

    def test_create_with_attachment(self):
        alice = account("alice@contoso.example", "alice-demo-pass")
        subject = f"with attachment {uuid.uuid4()}"
        m = Message(account=alice, folder=alice.drafts, subject=subject, body="x")
        m.attach(FileAttachment(name="a.txt", content=b"hello"))
        m.save()
        self.assertEqual(alice.drafts.get(subject=subject).attachments[0].content, b"hello")

    def test_sync_folder_items(self):
        alice = account("alice@contoso.example", "alice-demo-pass")
        changes = list(alice.inbox.sync_items())
        self.assertGreaterEqual(len(changes), 3)
        self.assertEqual(list(alice.inbox.sync_items()), [], "no changes since the last sync")

    def test_resolve_names(self):
        alice = account("alice@contoso.example", "alice-demo-pass")
        found = list(alice.protocol.resolve_names(["bob"]))
        self.assertTrue(any("bob@contoso.example" in str(r) for r in found), found)

    def test_impersonation_header_reaches_exchange_for_the_impersonated_mailbox(self):
        clear_sim_requests()
        archiver = account("archiver@contoso.example", "archiver-demo-pass",
                           mailbox="alice@contoso.example", access_type=IMPERSONATION)
        self.assertEqual(archiver.access_type, IMPERSONATION)
        archiver.inbox.get(subject="Quarterly report")
        ews = [r for r in sim_requests() if "/ews/" in r["path"].lower()]
        self.assertTrue(ews)
        for r in ews:
            self.assertRegex(r["body"], r"<t:ExchangeImpersonation[^>]*><t:ConnectingSID>"
                                        r"<t:PrimarySmtpAddress>alice@contoso\.example</t:PrimarySmtpAddress>")
            self.assertNotIn("archiver@contoso.example", r["body"])

    def test_streaming_notifications_of_a_new_mail(self):
        bob = account("bob@contoso.example", "bob-demo-pass")
        subscription = bob.inbox.subscribe_to_streaming()
        try:
            subject = f"Streamed {uuid.uuid4()}"
            alice = account("alice@contoso.example", "alice-demo-pass")
            Message(account=alice, subject=subject, body="x", to_recipients=["bob@contoso.example"]).send()
            events = []
            for notification in bob.inbox.get_streaming_events(
                    subscription, connection_timeout=1, max_notifications_returned=1):
                events.extend(notification.events)
            kinds = {type(e) for e in events}
            self.assertIn(NewMailEvent, kinds, events)
            self.assertIn(CreatedEvent, kinds, events)
            created = next(e for e in events if isinstance(e, CreatedEvent))
            self.assertEqual(created.parent_folder_id.id, bob.inbox.id)
            [item] = list(bob.fetch(ids=[(created.item_id.id, created.item_id.changekey)]))
            self.assertEqual(item.subject, subject)
        finally:
            self.assertTrue(bob.inbox.unsubscribe(subscription))

    @unittest.skipIf(os.environ.get("EWS_RECORD_DIR"), "recording: the client talks plain HTTP to the recording proxy, Autodiscover needs the gateway's TLS port")
    def test_autodiscover_finds_the_gateway(self):
        with autodiscover_names() as looked_up:
            creds = Credentials("alice@contoso.example", "alice-demo-pass")
            alice = Account("alice@contoso.example", credentials=creds, autodiscover=True, access_type=DELEGATE)
            self.assertEqual(alice.protocol.service_endpoint,
                             "https://autodiscover.contoso.example/EWS/Exchange.asmx")
            self.assertEqual(alice.primary_smtp_address, "alice@contoso.example")
            self.assertIn("Quarterly report", [m.subject for m in alice.inbox.all()])
        # Step 1 (the bare domain) found no host; step 2 (autodiscover.<domain>) answered.
        self.assertEqual(looked_up["dns"][:2], ["contoso.example", "autodiscover.contoso.example"])
        self.assertIn(("autodiscover.contoso.example", 443), looked_up["connect"])

    @unittest.skipIf(os.environ.get("EWS_RECORD_DIR"), "recording: the client talks plain HTTP to the recording proxy, Autodiscover needs the gateway's TLS port")
    def test_autodiscover_with_a_wrong_password_fails(self):
        with autodiscover_names():
            creds = Credentials("alice@contoso.example", "wrong")
            with self.assertRaises(UnauthorizedError) as ctx:
                Account("alice@contoso.example", credentials=creds, autodiscover=True, access_type=DELEGATE)
            self.assertEqual(str(ctx.exception),
                             "Invalid credentials for https://autodiscover.contoso.example/autodiscover/autodiscover.svc")

    def test_wrong_password_is_unauthorized(self):
        with self.assertRaises(UnauthorizedError):
            list(account("alice@contoso.example", "wrong").inbox.all())


if __name__ == "__main__":
    EWS_URL, SIM_URL, CA_FILE = sys.argv[1], sys.argv[2], sys.argv[3]
    # requests (under exchangelib) verifies the gateway's certificate against this CA only.
    os.environ["REQUESTS_CA_BUNDLE"] = CA_FILE
    result = unittest.main(argv=sys.argv[:1], verbosity=2, exit=False).result
    failed = len(result.failures) + len(result.errors)
    print(f"exchangelib: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed or not result.testsRun else 0)
