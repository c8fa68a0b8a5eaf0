// The TypeScript SDK against a real gateway: two nodes on one Redis, started by the test.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { ConnectionRejected, GiftRefused, NotecardClient } from "../dist/index.js";
import { befriend, startTestbed, unique, waitFor } from "../support/testbed.mjs";

let bed;
const clients = [];
function client(user, urls, options = {}) {
  const made = new NotecardClient(urls, bed.tokenFor(user), { backoffBaseS: 0.05, backoffCapS: 0.5, ...options });
  clients.push(made);
  return made;
}

before(async () => {
  bed = await startTestbed(2);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  const invariant = await bed.admin("GET", "/admin/invariant");
  await bed.stop();
  assert.equal(invariant.ok, true, JSON.stringify(invariant.violations));
});

for (const encoding of ["msgpack", "json"]) {
  test(`a gift between two nodes is offered, accepted and told to both (${encoding})`, async () => {
    const [alice, bob] = [unique("alice"), unique("bob")];
    await befriend(bed, [alice, bob]);
    const a = client(alice, bed.nodes[0].url, { encoding });
    const b = client(bob, bed.nodes[1].url, { encoding });
    const [wa, wb] = await Promise.all([a.connect(), b.connect()]);
    assert.notEqual(wa.node, wb.node);
    assert.equal(wb.user, bob);
    const offered = [];
    b.on("offer", (gift) => offered.push(gift.gift_id));

    const gift = await a.sendGift(bob, { qty: 2 });
    assert.equal(gift.state, "pending");
    assert.equal(gift.cost, 20);
    const held = await a.balance();
    assert.deepEqual([held.available.note, held.held.note], [80, 20]);

    const offer = await b.nextOffer(10_000);
    assert.equal(offer.gift_id, gift.gift_id);
    const accepted = await b.accept(offer.gift_id);
    assert.equal(accepted.state, "accepted");
    assert.equal((await a.nextOutcome(10_000)).state, "accepted");
    assert.equal((await b.nextOutcome(10_000)).gift_id, gift.gift_id);
    assert.equal((await b.balance()).available.note, 120);
    assert.deepEqual(offered, [gift.gift_id]);
  });
}

test("regional card art: the offer and the balance name the recipient's region's skin, skins() lists it", async () => {
  const [alice, bob] = [unique("alice"), unique("bob")];
  const skinId = unique("tiger");
  await bed.admin("PUT", `/admin/skins/${skinId}`, {
    kind: "note", name: "Tiger", image_url: "https://cdn.example/tiger.png", regions: ["jsart"],
  });
  await befriend(bed, [alice, bob]);
  await bed.admin("PATCH", `/admin/users/${bob}`, { region: "jsart" });
  const a = client(alice, bed.nodes[0].url);
  const b = client(bob, bed.nodes[1].url);
  await Promise.all([a.connect(), b.connect()]);
  const gift = await a.sendGift(bob);
  const offer = await b.nextOffer(10_000);
  assert.equal(offer.gift_id, gift.gift_id);
  assert.equal(offer.skin, skinId);
  await b.decline(offer.gift_id);
  assert.deepEqual((await b.balance()).skins, { note: skinId });
  assert.equal((await a.balance()).skins, undefined);
  assert.deepEqual((await b.skins()).map((s) => [s.skin_id, s.optional]), [[skinId, false]]);
  assert.deepEqual(await a.skins(), []);
  await bed.admin("DELETE", `/admin/skins/${skinId}`);
});

test("a refusal carries its code, a repeated gift id gives the same gift, a declined card comes back", async () => {
  const [alice, bob, carol] = [unique("alice"), unique("bob"), unique("carol")];
  await befriend(bed, [alice, bob]);
  const a = client(alice, bed.nodes[0].url);
  const b = client(bob, bed.nodes[1].url);
  await Promise.all([a.connect(), b.connect()]);
  await assert.rejects(a.sendGift(alice), (e) => e instanceof GiftRefused && e.code === "SELF_GIFT");
  await assert.rejects(a.sendGift(carol), (e) => e instanceof GiftRefused && e.code === "UNKNOWN_USER");
  const first = await a.sendGift(bob, { giftId: unique("gid") });
  const again = await a.sendGift(bob, { giftId: first.gift_id });
  assert.deepEqual(again, first);
  await assert.rejects(a.sendGift(bob, { giftId: first.gift_id, qty: 3 }), (e) => e.code === "IDEMPOTENCY_CONFLICT");
  await b.nextOffer(10_000);
  assert.equal((await b.decline(first.gift_id)).state, "declined");
  await assert.rejects(b.accept(first.gift_id), (e) => e.code === "ALREADY_RESOLVED" && e.gift.state === "declined");
  await waitFor(async () => (await a.balance()).available.note === 100, 10_000, "the card back");
});

/** A male sender and a female ward of a region with the guardian rule, her guardian linked. */
async function guardedWard() {
  const [sender, ward, guardian] = [unique("sam"), unique("wafa"), unique("gabe")];
  await befriend(bed, [sender, ward]);
  await bed.admin("POST", "/admin/users", { user_id: guardian, verified: true });
  await bed.admin("PUT", "/admin/regions/mena", { guardian_rule: "male_to_female", guardian_window_ms: 60_000 });
  await bed.admin("PATCH", `/admin/users/${sender}`, { gender: "male" });
  await bed.admin("PATCH", `/admin/users/${ward}`, { gender: "female", region: "mena" });
  await bed.admin("PUT", `/admin/users/${ward}/guardian`, { guardian, operator: "ops" });
  return [sender, ward, guardian];
}

test("a guardian approves a gift to their ward on one node, which then offers it to the ward on the other", async () => {
  const [sender, ward, guardian] = await guardedWard();
  const s = client(sender, bed.nodes[0].url);
  const w = client(ward, bed.nodes[1].url);
  const g = client(guardian, bed.nodes[0].url);
  await Promise.all([s.connect(), w.connect(), g.connect()]);
  const gift = await s.sendGift(ward);
  assert.equal(gift.state, "pending");
  const asked = await g.nextGuardianRequest(10_000);
  assert.deepEqual([asked.gift_id, asked.recipient], [gift.gift_id, ward]);
  assert.equal((await g.guardianAnswer(gift.gift_id, ward, true)).state, "pending");
  assert.equal((await g.guardianAnswer(gift.gift_id, ward, true)).state, "pending");
  await assert.rejects(g.guardianAnswer(gift.gift_id, ward, false), (e) => e.code === "ALREADY_RESOLVED");
  assert.equal((await w.nextOffer(10_000)).gift_id, gift.gift_id);
  assert.equal((await w.accept(gift.gift_id)).state, "accepted");
  await bed.admin("DELETE", "/admin/regions/mena");
});

test("a guardian's new device lists the requests made before it connected; an answer there settles them on the other node", async () => {
  const [sender, ward, guardian] = await guardedWard();
  const s = client(sender, bed.nodes[0].url);
  const w = client(ward, bed.nodes[1].url);
  const phone = client(guardian, bed.nodes[0].url);
  await Promise.all([s.connect(), w.connect(), phone.connect()]);
  const gift = await s.sendGift(ward);
  assert.equal((await phone.nextGuardianRequest(10_000)).gift_id, gift.gift_id);
  // A device that was never connected: no stream position, nothing replayed, but listed.
  const tablet = client(guardian, bed.nodes[1].url);
  await tablet.connect();
  const listed = await tablet.guardianRequests();
  assert.deepEqual(listed.map((g) => [g.gift_id, g.recipient, g.state]), [[gift.gift_id, ward, "pending"]]);
  const told = [];
  phone.on("guardian_done", (g) => told.push(g.gift_id));
  assert.equal((await tablet.guardianAnswer(gift.gift_id, ward, false)).state, "declined");
  const settled = await phone.nextGuardianSettled(10_000);
  assert.deepEqual([settled.gift_id, settled.state], [gift.gift_id, "declined"]);
  assert.equal((await tablet.nextGuardianSettled(10_000)).gift_id, gift.gift_id);
  assert.deepEqual(told, [gift.gift_id]);
  assert.deepEqual(await phone.guardianRequests(), []);
  assert.equal((await s.nextOutcome(10_000)).state, "declined");
  await bed.admin("DELETE", "/admin/regions/mena");
});

test("consent: giveConsent and withdrawConsent decide whether a gift moves in a region that asks for it", async () => {
  const [anna, bob] = [unique("anna"), unique("bob")];
  await befriend(bed, [anna, bob]);
  await bed.admin("PUT", "/admin/regions/jseu", { consent_required: true, consent_version: "privacy-v2" });
  for (const user of [anna, bob]) await bed.admin("PATCH", `/admin/users/${user}`, { region: "jseu" });
  // The nodes read the region's rule from Redis: a welcome naming the text shows it applied.
  await waitFor(async () => {
    const probe = new NotecardClient(bed.nodes[0].url, bed.tokenFor(anna), { reconnect: false });
    try {
      return (await probe.connect()).consent_needed === "privacy-v2";
    } finally {
      await probe.close();
    }
  }, 20_000, "the region's consent rule on the node");
  const a = client(anna, bed.nodes[0].url);
  const b = client(bob, bed.nodes[1].url);
  const [welcome] = await Promise.all([a.connect(), b.connect()]);
  assert.equal(welcome.consent_needed, "privacy-v2");
  assert.equal((await b.giveConsent("privacy-v2")).changed, true);
  const refused = (code) => (e) => e instanceof GiftRefused && e.code === code;

  await assert.rejects(a.sendGift(bob), refused("CONSENT_REQUIRED"));
  const older = await a.giveConsent("privacy-v1", "signup"); // not the current text
  assert.deepEqual([older.t, older.changed, older.version, older.channel], ["consent", true, "privacy-v1", "signup"]);
  await assert.rejects(a.sendGift(bob), refused("CONSENT_REQUIRED"));
  const given = await a.giveConsent("privacy-v2");
  assert.deepEqual([given.changed, given.version, given.channel], [true, "privacy-v2", "sdk"]);
  assert.equal(typeof given.at_ms, "number");
  assert.equal((await a.giveConsent("privacy-v2")).changed, false); // a repeat changes nothing
  const gift = await a.sendGift(bob);
  assert.equal((await b.accept((await b.nextOffer(10_000)).gift_id)).state, "accepted");
  assert.equal(gift.state, "pending");

  const withdrawn = await a.withdrawConsent("settings");
  assert.deepEqual([withdrawn.changed, withdrawn.version], [true, undefined]);
  assert.equal((await a.withdrawConsent()).changed, false);
  await assert.rejects(a.sendGift(bob), refused("CONSENT_REQUIRED"));
  await b.withdrawConsent();
  await a.giveConsent("privacy-v2");
  await assert.rejects(a.sendGift(bob), refused("RECIPIENT_NO_CONSENT"));
  const held = await a.balance();
  assert.deepEqual([held.available.note, held.held.note], [90, 0]); // one card given, nothing held
  for (const user of [anna, bob]) await bed.admin("PATCH", `/admin/users/${user}`, { region: "global" });
  await bed.admin("DELETE", "/admin/regions/jseu");
});

test("a forged token is rejected with 3500 and the client does not retry", async () => {
  const c = new NotecardClient(bed.nodes[0].url, "bm90LWEtdG9rZW4.c2lnbmF0dXJl", { backoffBaseS: 0.01 });
  await assert.rejects(c.connect(), (e) => e instanceof ConnectionRejected && e.closeCode === 3500);
  assert.equal(c.connections, 0);
});

test("a live room: wish, join, quote, quoted gift, progress pushed to viewers", async () => {
  const [star, fan] = [unique("star"), unique("fan")];
  await befriend(bed, [star, fan]);
  const s = client(star, bed.nodes[0].url);
  const f = client(fan, bed.nodes[1].url);
  await Promise.all([s.connect(), f.connect()]);
  const opened = await s.openWish("note", 5);
  assert.equal(opened.wish_target, 5);
  const joined = await f.joinRoom(star);
  assert.equal(joined.viewers, 1);
  const quote = await f.quote(star, { qty: 2 });
  assert.equal(quote.room, star);
  const gift = await f.sendGift(star, { qty: 2, quote: quote.quote_id });
  assert.equal(gift.room, star);
  await s.accept((await s.nextOffer(10_000)).gift_id);
  await waitFor(async () => (await f.nextRoomUpdate(10_000)).wish_progress === 2, 15_000, "the wish's progress");
  const room = await f.room(star, 5);
  assert.equal(room.top[0].user, fan);
  assert.equal(room.rank, 1);
});

test("a node is killed: the client reconnects to the other, resends, resumes and yields nothing twice", async () => {
  const [alice, bob] = [unique("alice"), unique("bob")];
  await befriend(bed, [alice, bob]);
  const a = client(alice, bed.nodes[0].url);
  const tablet = client(bob, bed.nodes[0].url); // keeps bob online while his phone is away
  const phone = client(bob, [bed.nodes[1].url, bed.nodes[0].url]);
  await Promise.all([a.connect(), tablet.connect(), phone.connect()]);
  const seen = [];
  phone.on("offer", (g) => seen.push(g.gift_id));
  const before = await a.sendGift(bob);
  await waitFor(() => seen.length === 1, 10_000, "the first offer");
  const states = [];
  phone.on("connected", (up) => states.push(up));

  bed.kill(1);
  await waitFor(() => states.includes(false), 10_000, "the phone to notice");
  const missed = await a.sendGift(bob); // while the phone is away
  await tablet.accept(missed.gift_id);
  await waitFor(() => phone.connections === 2, 20_000, "the phone to reconnect");
  assert.equal(phone.url, bed.nodes[0].url);
  assert.equal(phone.recovered, true);
  await waitFor(() => seen.length === 2, 10_000, "the missed offer");
  assert.deepEqual(seen, [before.gift_id, missed.gift_id]);
  const outcome = await phone.nextOutcome(10_000);
  assert.equal(outcome.gift_id, missed.gift_id);
  assert.equal((await phone.ping()).t, "pong"); // requests flow on the new connection
});
