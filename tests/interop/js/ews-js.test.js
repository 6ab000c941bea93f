// ews-javascript-api (real client, Basic auth through WebCredentials) against `ews-gateway demo`.
//
// Run by ../run-ews-js.sh, which starts the demo and sets EWS_URL and SIM_URL.
// Each scenario asserts what the library returns or throws; the simulator's request log
// (`/_sim/requests`) shows what reached "Exchange".
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const ews = require('ews-javascript-api');
// Not re-exported by the package's index; the library throws it for an HTTP 401.
const {
  ServiceRequestUnauthorizedException,
} = require('ews-javascript-api/js/Exceptions/ServiceRequestUnauthorizedException');

const EWS_URL = process.env.EWS_URL;
const SIM_URL = process.env.SIM_URL;
if (!EWS_URL || !SIM_URL) {
  throw new Error('EWS_URL and SIM_URL must be set (run tests/interop/run-ews-js.sh)');
}

const ALICE = ['alice@contoso.example', 'alice-demo-pass'];
const BOB = ['bob@contoso.example', 'bob-demo-pass'];
const ARCHIVER = ['archiver@contoso.example', 'archiver-demo-pass'];

function service([login, password], impersonate = null) {
  const svc = new ews.ExchangeService(ews.ExchangeVersion.Exchange2016);
  svc.Credentials = new ews.WebCredentials(login, password);
  svc.Url = new ews.Uri(EWS_URL);
  if (impersonate) {
    svc.ImpersonatedUserId = new ews.ImpersonatedUserId(ews.ConnectingIdType.SmtpAddress, impersonate);
  }
  return svc;
}

async function simRequests() {
  const resp = await fetch(`${SIM_URL}/_sim/requests`);
  assert.equal(resp.status, 200);
  return resp.json();
}

async function clearSimRequests() {
  const resp = await fetch(`${SIM_URL}/_sim/requests`, { method: 'DELETE' });
  assert.ok(resp.ok, `DELETE /_sim/requests: ${resp.status}`);
}

function ewsBodies(requests) {
  return requests.filter((r) => r.path.toLowerCase().startsWith('/ews/')).map((r) => r.body);
}

async function findAll(svc, folder, pageSize = 100) {
  const items = [];
  let offset = 0;
  for (;;) {
    const page = await svc.FindItems(folder, new ews.ItemView(pageSize, offset));
    items.push(...page.Items);
    if (!page.MoreAvailable) return items;
    offset = page.NextPageOffset;
  }
}

async function subjects(svc, folder) {
  return (await findAll(svc, folder)).map((i) => i.Subject);
}

async function findBySubject(svc, folder, subject) {
  const found = (await findAll(svc, folder)).filter((i) => i.Subject === subject);
  assert.equal(found.length, 1, `exactly one "${subject}" expected`);
  return found[0];
}

test('version probe: GetFolder(inbox) answers with the server version and the inbox', async () => {
  const svc = service(ALICE);
  const inbox = await ews.Folder.Bind(svc, ews.WellKnownFolderName.Inbox);
  assert.equal(inbox.DisplayName, 'Inbox');
  assert.ok(inbox.TotalCount >= 3, `inbox TotalCount ${inbox.TotalCount}`);
  assert.ok(svc.ServerInfo, 'the response carried ServerVersionInfo');
  assert.equal(svc.ServerInfo.MajorVersion, 15);
});

test('list folders: FindFolder under msgfolderroot names the well-known folders', async () => {
  const svc = service(ALICE);
  const res = await svc.FindFolders(ews.WellKnownFolderName.MsgFolderRoot, new ews.FolderView(100));
  const names = res.Folders.map((f) => f.DisplayName);
  for (const name of ['Inbox', 'Sent Items', 'Drafts', 'Deleted Items', 'Projects']) {
    assert.ok(names.includes(name), `${name} in ${JSON.stringify(names)}`);
  }
});

test('inbox paging: FindItem pages of 2, no overlap, every message once', async () => {
  const svc = service(ALICE);
  const all = await subjects(svc, ews.WellKnownFolderName.Inbox);
  assert.ok(all.includes('Quarterly report'));
  await clearSimRequests();
  const first = await svc.FindItems(ews.WellKnownFolderName.Inbox, new ews.ItemView(2, 0));
  assert.equal(first.Items.length, 2);
  assert.equal(first.MoreAvailable, true);
  assert.equal(first.NextPageOffset, 2);
  assert.equal(first.TotalCount, all.length);
  const pages = [];
  let offset = 0;
  for (;;) {
    const page = await svc.FindItems(ews.WellKnownFolderName.Inbox, new ews.ItemView(2, offset));
    pages.push(page.Items.map((i) => i.Subject));
    if (!page.MoreAvailable) break;
    offset = page.NextPageOffset;
  }
  const flat = pages.flat();
  assert.ok(pages.length >= 2, 'more than one page');
  assert.equal(new Set(flat).size, flat.length, 'pages must not overlap');
  assert.deepEqual([...flat].sort(), [...all].sort());
  const finds = ewsBodies(await simRequests()).filter((b) => b.includes('FindItem'));
  assert.ok(finds.length >= 1 + pages.length, `FindItem requests reached Exchange: ${finds.length}`);
});

test('read a message with its attachment', async () => {
  const svc = service(ALICE);
  const found = await findBySubject(svc, ews.WellKnownFolderName.Inbox, 'Quarterly report');
  const props = new ews.PropertySet(ews.BasePropertySet.FirstClassProperties, [ews.ItemSchema.Attachments]);
  const msg = await ews.EmailMessage.Bind(svc, found.Id, props);
  assert.equal(msg.Subject, 'Quarterly report');
  assert.equal(msg.From.Address, 'bob@contoso.example');
  assert.match(msg.Body.Text, /quarterly report is attached/);
  assert.equal(msg.Attachments.Count, 1);
  const att = msg.Attachments._getItem(0);
  assert.equal(att.Name, 'report.csv');
  await att.Load();
  assert.equal(Buffer.from(att.Base64Content, 'base64').toString(), 'quarter,revenue\nQ3,1200\n');
});

test('alice sends to bob, bob finds it, alice has it in Sent Items', async () => {
  const subject = `Hello Bob ${randomUUID()}`;
  const alice = service(ALICE);
  const msg = new ews.EmailMessage(alice);
  msg.Subject = subject;
  msg.Body = new ews.MessageBody(ews.BodyType.Text, 'Sent through ews-gateway by ews-javascript-api');
  msg.ToRecipients.Add('bob@contoso.example');
  await msg.SendAndSaveCopy();
  const bob = service(BOB);
  const got = await findBySubject(bob, ews.WellKnownFolderName.Inbox, subject);
  const full = await ews.EmailMessage.Bind(bob, got.Id);
  assert.equal(full.From.Address, 'alice@contoso.example');
  assert.match(full.Body.Text, /ews-javascript-api/);
  assert.ok((await subjects(alice, ews.WellKnownFolderName.SentItems)).includes(subject));
});

test('move to Junk, then delete', async () => {
  const bob = service(BOB);
  const subject = `to be moved ${randomUUID()}`;
  const msg = new ews.EmailMessage(bob);
  msg.Subject = subject;
  msg.Body = new ews.MessageBody(ews.BodyType.Text, 'x');
  await msg.Save(ews.WellKnownFolderName.Inbox);
  const item = await findBySubject(bob, ews.WellKnownFolderName.Inbox, subject);
  await item.Move(ews.WellKnownFolderName.JunkEmail);
  assert.ok(!(await subjects(bob, ews.WellKnownFolderName.Inbox)).includes(subject));
  const moved = await findBySubject(bob, ews.WellKnownFolderName.JunkEmail, subject);
  await moved.Delete(ews.DeleteMode.HardDelete);
  assert.ok(!(await subjects(bob, ews.WellKnownFolderName.JunkEmail)).includes(subject));
});

test('mark read', async () => {
  const svc = service(ALICE);
  const item = await findBySubject(svc, ews.WellKnownFolderName.Inbox, 'Scanner: document 0042');
  const msg = await ews.EmailMessage.Bind(svc, item.Id);
  assert.equal(msg.IsRead, false, 'seeded unread');
  msg.IsRead = true;
  await msg.Update(ews.ConflictResolutionMode.AlwaysOverwrite);
  const again = await ews.EmailMessage.Bind(svc, item.Id);
  assert.equal(again.IsRead, true);
});

test('sync a folder: SyncFolderItems returns every item, then nothing, then the new one', async () => {
  const svc = service(BOB);
  const inbox = new ews.FolderId(ews.WellKnownFolderName.Inbox);
  const sync = (state) =>
    svc.SyncFolderItems(inbox, ews.PropertySet.FirstClassProperties, null, 512, ews.SyncFolderItemsScope.NormalItems, state);
  const all = await sync(null);
  const current = await subjects(svc, ews.WellKnownFolderName.Inbox);
  assert.equal(all.Count, current.length);
  assert.equal(all.MoreChangesAvailable, false);
  assert.ok(all.SyncState, 'a sync state');
  for (const change of all.GetEnumerator()) assert.equal(change.ChangeType, ews.ChangeType.Create);
  assert.ok(all.GetEnumerator().some((c) => c.Item.Subject === 'Welcome, Bob'));
  const none = await sync(all.SyncState);
  assert.equal(none.Count, 0, 'no changes since the last sync');
  const subject = `synced ${randomUUID()}`;
  const msg = new ews.EmailMessage(svc);
  msg.Subject = subject;
  msg.Body = new ews.MessageBody(ews.BodyType.Text, 'x');
  await msg.Save(ews.WellKnownFolderName.Inbox);
  const one = await sync(none.SyncState);
  assert.equal(one.Count, 1);
  assert.equal(one._getItem(0).ChangeType, ews.ChangeType.Create);
  assert.equal(one._getItem(0).Item.Subject, subject);
});

test('streaming notifications: bob hears of alice\'s mail (NewMail and Created)', async () => {
  const bob = service(BOB);
  const sub = await bob.SubscribeToStreamingNotifications(
    [new ews.FolderId(ews.WellKnownFolderName.Inbox)],
    ews.EventType.NewMail,
    ews.EventType.Created,
  );
  assert.ok(sub.Id, 'a subscription id');
  const conn = new ews.StreamingSubscriptionConnection(bob, 1);
  conn.AddSubscription(sub);
  const events = [];
  let timer;
  const heard = new Promise((resolve, reject) => {
    conn.OnNotificationEvent.push((_sender, args) => {
      events.push(...args.Events);
      if (events.some((e) => e.EventType === ews.EventType.Created)) resolve();
    });
    conn.OnSubscriptionError.push((_sender, args) => reject(args.Exception || new Error('subscription error')));
    // A lost stream is a failure: without notifications within the connection's life there is none.
    timer = setTimeout(() => reject(new Error(`no Created event within 30 s: ${JSON.stringify(events.map((e) => e.EventType))}`)), 30000);
  });
  try {
    conn.Open();
    // The connection is hanging; the mail arrives afterwards, so the events come over the stream.
    await new Promise((r) => setTimeout(r, 500));
    const subject = `Streamed ${randomUUID()}`;
    const alice = service(ALICE);
    const msg = new ews.EmailMessage(alice);
    msg.Subject = subject;
    msg.Body = new ews.MessageBody(ews.BodyType.Text, 'x');
    msg.ToRecipients.Add('bob@contoso.example');
    await msg.Send();
    await heard;
    const kinds = events.map((e) => e.EventType);
    assert.ok(kinds.includes(ews.EventType.NewMail), JSON.stringify(kinds));
    const created = events.find((e) => e.EventType === ews.EventType.Created);
    const inbox = await ews.Folder.Bind(bob, ews.WellKnownFolderName.Inbox, ews.PropertySet.IdOnly);
    assert.equal(created.ParentFolderId.UniqueId, inbox.Id.UniqueId);
    const item = await ews.EmailMessage.Bind(bob, created.ItemId);
    assert.equal(item.Subject, subject);
  } finally {
    clearTimeout(timer);
    conn.Close();
    await sub.Unsubscribe();
  }
});

test('archiver reads alice through ImpersonatedUserId', async () => {
  await clearSimRequests();
  const svc = service(ARCHIVER, 'alice@contoso.example');
  const found = await subjects(svc, ews.WellKnownFolderName.Inbox);
  assert.ok(found.includes('Quarterly report'));
  const bodies = ewsBodies(await simRequests());
  assert.ok(bodies.length >= 1);
  // The gateway always sends the decided mailbox in its one canonical form (PrimarySmtpAddress).
  for (const b of bodies) assert.match(b, /<t:PrimarySmtpAddress>alice@contoso\.example<\/t:PrimarySmtpAddress>/);
});

// ews-javascript-api rejects with the parsed SoapFaultDetails (not a ServiceResponseException).
test('alice impersonating bob: SoapFaultDetails ErrorImpersonateUserDenied, nothing upstream', async () => {
  await clearSimRequests();
  const svc = service(ALICE, 'bob@contoso.example');
  await assert.rejects(
    () => svc.FindItems(ews.WellKnownFolderName.Inbox, new ews.ItemView(10)),
    (err) => {
      assert.ok(err instanceof ews.SoapFaultDetails, `got ${err && err.constructor.name}: ${err}`);
      assert.equal(err.ResponseCode, ews.ServiceError.ErrorImpersonateUserDenied);
      assert.equal(err.HttpStatusCode, 500);
      assert.match(err.message, /alice@contoso\.example may not act as bob@contoso\.example/);
      return true;
    },
  );
  const leaked = ewsBodies(await simRequests()).filter((b) => b.includes('bob@contoso.example'));
  assert.deepEqual(leaked, [], 'no request acting as bob may reach Exchange');
});

test('wrong password: SoapFaultDetails wrapping ServiceRequestUnauthorizedException (HTTP 401)', async () => {
  const svc = service([ALICE[0], 'wrong-password']);
  await assert.rejects(
    () => ews.Folder.Bind(svc, ews.WellKnownFolderName.Inbox),
    (err) => {
      assert.ok(err instanceof ews.SoapFaultDetails, `got ${err && err.constructor.name}: ${err}`);
      assert.equal(err.HttpStatusCode, 401);
      assert.ok(err.Exception instanceof ServiceRequestUnauthorizedException, `inner ${err.Exception}`);
      assert.equal(err.message, '401 Unauthorized');
      return true;
    },
  );
});
