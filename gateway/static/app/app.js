// The notecard web app: plain ES modules on the TypeScript SDK (../lib/sdk, built from
// clients/js). Sign in with a token (or a development token from this node), see balances
// and holds, send gifts, answer offers live, follow outcomes and a live room.
import { GiftRefused, NotecardClient } from "../lib/sdk/index.js";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
};

/** What each refusal code means to the person who tapped the button. */
const REASONS = {
  SELF_GIFT: "You cannot give a card to yourself.",
  UNKNOWN_USER: "There is no such user.",
  UNKNOWN_KIND: "There is no such card kind.",
  BAD_QUANTITY: "That is more cards than one gift may carry.",
  SENDER_BANNED: "Your account may not give cards.",
  RECIPIENT_BANNED: "That account may not receive cards.",
  NOT_VERIFIED: "Verify your real name before giving cards.",
  BLOCKED: "One of you blocked the other.",
  NOT_MUTUAL_3D: "You can give cards to friends who have followed each other for 3 days.",
  LIMIT_DAILY_SEND: "You reached today's limit of gifts.",
  LIMIT_DAILY_RECEIVE: "They reached today's limit of gifts received.",
  INSUFFICIENT_BALANCE: "You do not have enough cards.",
  RECIPIENT_OFFLINE: "They are not online to accept it right now.",
  GIFT_EXPIRED: "The offer expired; the card went back to the sender.",
  ALREADY_RESOLVED: "This gift was already answered.",
  QUOTE_EXPIRED: "The price quote lapsed; ask for a new one.",
  NO_WISH: "The streamer has no open wish.",
  NOT_IN_ROOM: "Join the room first.",
  RATE_LIMITED: "Too many requests; wait a moment.",
  UNAVAILABLE: "The service is busy; the gift may or may not have gone. Check your outcomes.",
};
const explain = (error) =>
  error instanceof GiftRefused ? `${REASONS[error.code] ?? error.reason} (${error.code})` : `${error.message ?? error}`;

const state = { client: null, user: null, unit: 10, offers: new Map(), away: null, inWelcome: false, room: null };

function show(ids, visible) {
  for (const id of ids) $(id).classList.toggle("hidden", !visible);
}

function setStatus(text, kind = "") {
  const status = $("status");
  status.textContent = text;
  status.className = `pill ${kind}`;
}

function notice(target, text, kind) {
  target.replaceChildren(el("div", { class: `notice ${kind}`, role: kind === "bad" ? "alert" : "status" }, text));
}

const cards = (units) => {
  const whole = units / state.unit;
  return Number.isInteger(whole) ? String(whole) : whole.toFixed(1);
};

async function config() {
  const overrides = new URLSearchParams(location.search).get("gateways");
  const response = await fetch("config.json");
  const found = response.ok ? await response.json() : { gateways: [], dev_tokens: false };
  if (overrides) found.gateways = overrides.split(",").filter(Boolean);
  return found;
}

async function devToken(user) {
  const response = await fetch("token", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user }) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message ?? `no development token (${response.status})`);
  return body.token;
}

async function signIn(user, token) {
  const settings = await config();
  if (!settings.gateways.length) throw new Error("this page does not know where the gateway is (config.json)");
  if (!token) token = await devToken(user);
  const client = new NotecardClient(settings.gateways, token, { encoding: "msgpack" });
  wire(client);
  setStatus("connecting…", "warn");
  const welcome = await client.connect();
  if (welcome.user !== user) throw new Error(`the token is for ${welcome.user}, not ${user}`);
  state.client = client;
  state.user = user;
  sessionStorage.setItem("notecard.signin", JSON.stringify({ user, token }));
  $("whoami").textContent = `Signed in as ${user}.`;
  show(["signin"], false);
  show(["wallet", "give", "offers-box", "outcomes-box", "room-box", "signout"], true);
  await refreshBalance();
}

function wire(client) {
  client.on("welcome", (welcome) => {
    setStatus(`connected · ${welcome.node}`, "ok");
    if (client.connections > 1) {
      state.away = { offers: 0, outcomes: 0, recovered: welcome.recovered, head: welcome.offset };
      state.inWelcome = true;
      queueMicrotask(() => (state.inWelcome = false)); // the welcome's pending offers come in the same batch
      renderAway();
      refreshBalance();
    }
  });
  client.on("connected", (up) => {
    if (!up) setStatus("reconnecting…", "warn");
  });
  client.on("failed", (error) => setStatus(`disconnected (${error.closeCode})`, "bad"));
  client.on("offer", (gift) => {
    const missed = isMissed(client);
    if (missed) state.away.offers += 1;
    addOffer(gift, missed);
    renderAway();
  });
  client.on("outcome", (gift) => {
    const missed = isMissed(client);
    if (missed) state.away.outcomes += 1;
    addOutcome(gift, missed);
    removeOffer(gift.gift_id);
    renderAway();
    refreshBalance();
  });
  client.on("room", (room) => renderRoom(room));
}

/** Whether what just arrived happened while this page was disconnected. */
function isMissed(client) {
  const away = state.away;
  if (away === null) return false;
  return state.inWelcome || (client.offset !== null && client.offset <= away.head);
}

function renderAway() {
  const away = state.away;
  if (away === null) return;
  const parts = [`Reconnected. While you were away: ${away.offers} offer(s), ${away.outcomes} outcome(s).`];
  if (!away.recovered) parts.push("Some history could not be replayed; balances were refreshed.");
  const box = $("away");
  box.textContent = parts.join(" ");
  box.classList.remove("hidden");
}

async function refreshBalance() {
  if (!state.client) return;
  try {
    const balance = await state.client.balance();
    state.unit = balance.units_per_card;
    const kinds = [...new Set([...Object.keys(balance.available), ...Object.keys(balance.held), "note"])];
    $("balance").replaceChildren(
      ...kinds.map((kind) =>
        el("div", { class: "tile" }, el("div", { class: "muted" }, kind),
          el("div", { class: "big", "data-kind": kind }, cards(balance.available[kind] ?? 0)),
          el("div", { class: "muted" }, `${cards(balance.held[kind] ?? 0)} held`))),
      ...(balance.points === undefined ? [] : [el("div", { class: "tile" }, el("div", { class: "muted" }, "points"), el("div", { class: "big" }, String(balance.points)))]),
    );
    for (const select of [$("give-kind"), $("wish-kind")]) {
      const current = select.value;
      select.replaceChildren(...kinds.map((k) => el("option", {}, k)));
      select.value = kinds.includes(current) ? current : kinds[0];
    }
  } catch (error) {
    console.warn("balance", error);
  }
}

function addOffer(gift, missed) {
  if (gift.expires_at_ms <= Date.now() || state.offers.has(gift.gift_id)) return;
  const countdown = el("span", { class: "pill" });
  const answer = async (how, button) => {
    for (const b of item.querySelectorAll("button")) b.disabled = true;
    try {
      await (how === "accept" ? state.client.accept(gift.gift_id) : state.client.decline(gift.gift_id));
    } catch (error) {
      item.append(el("div", { class: "notice bad grow" }, explain(error)));
      if (!(error instanceof GiftRefused)) for (const b of item.querySelectorAll("button")) b.disabled = false;
      return;
    }
    removeOffer(gift.gift_id);
    refreshBalance();
    button.blur();
  };
  const item = el("li", { "data-gift": gift.gift_id },
    el("span", { class: "grow" }, `${gift.qty} ${gift.kind} card${gift.qty > 1 ? "s" : ""} from `, el("strong", {}, gift.sender)),
    ...(missed ? [el("span", { class: "pill warn" }, "while you were away")] : []),
    countdown,
    el("button", { onclick: (e) => answer("accept", e.target) }, "Accept"),
    el("button", { class: "secondary", onclick: (e) => answer("decline", e.target) }, "Decline"));
  state.offers.set(gift.gift_id, { gift, item, countdown });
  $("offers").prepend(item);
  tick();
}

function removeOffer(giftId) {
  const offer = state.offers.get(giftId);
  if (offer === undefined) return;
  offer.item.remove();
  state.offers.delete(giftId);
  $("no-offers").classList.toggle("hidden", state.offers.size > 0);
}

function tick() {
  for (const [id, offer] of state.offers) {
    const left = Math.round((offer.gift.expires_at_ms - Date.now()) / 1000);
    if (left <= 0) removeOffer(id); // the server expires it and tells both (section 7)
    else offer.countdown.textContent = `${left}s`;
  }
  $("no-offers").classList.toggle("hidden", state.offers.size > 0);
}
setInterval(tick, 1000);

function addOutcome(gift, missed) {
  const mine = gift.sender === state.user;
  const who = mine ? `to ${gift.recipient}` : `from ${gift.sender}`;
  const kind = { accepted: "ok", declined: "bad", expired: "warn" }[gift.state] ?? "";
  $("outcomes").prepend(el("li", { "data-gift": gift.gift_id, "data-state": gift.state },
    el("span", { class: "grow" }, `${gift.qty} ${gift.kind} ${who}`),
    ...(missed ? [el("span", { class: "pill warn" }, "while you were away")] : []),
    el("span", { class: `pill ${kind}` }, gift.state)));
  $("no-outcomes").classList.add("hidden");
}

function renderRoom(room) {
  if (state.room !== room.room) return;
  $("room").classList.remove("hidden");
  $("room-title").textContent = `${room.room}'s room`;
  $("room-viewers").textContent = `${room.viewers} watching`;
  const wish = $("room-wish");
  if (room.wish_target !== undefined) {
    const progress = room.wish_progress ?? 0;
    wish.replaceChildren(el("div", {}, `Wish: ${progress} / ${room.wish_target} ${room.wish_kind}`),
      el("progress", { max: String(room.wish_target), value: String(Math.min(progress, room.wish_target)) }));
  } else wish.replaceChildren(el("p", { class: "muted" }, "No open wish."));
  $("room-top").replaceChildren(...room.top.map((line) =>
    el("tr", {}, el("td", {}, String(line.rank)), el("td", {}, line.user), el("td", {}, String(line.points)))));
  if (room.rank !== undefined) $("room-me").textContent = `You: rank ${room.rank}, ${room.points} points.`;
}

// ---------------------------------------------------------- forms
$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("signin-error");
  error.classList.add("hidden");
  try {
    await signIn($("signin-user").value.trim(), $("signin-token").value.trim());
  } catch (e) {
    setStatus("signed out");
    await state.client?.close();
    error.textContent = explain(e);
    error.classList.remove("hidden");
  }
});

$("signout").addEventListener("click", async () => {
  sessionStorage.removeItem("notecard.signin");
  await state.client?.close();
  location.reload();
});

$("give-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("give-send");
  button.disabled = true;
  const to = $("give-to").value.trim();
  try {
    const gift = await state.client.sendGift(to, { qty: Number($("give-qty").value), kind: $("give-kind").value });
    notice($("give-result"), `Sent ${gift.qty} ${gift.kind} to ${to}: waiting for them to accept (held ${cards(gift.cost)}).`, "ok");
    refreshBalance();
  } catch (error) {
    notice($("give-result"), explain(error), "bad");
  } finally {
    button.disabled = false;
  }
});

$("room-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("room-name").value.trim();
  try {
    if (state.room && state.room !== name) await state.client.leaveRoom(state.room).catch(() => undefined);
    state.room = name;
    renderRoom(await state.client.joinRoom(name));
    renderRoom(await state.client.room(name, 10));
  } catch (error) {
    state.room = null;
    $("room").classList.add("hidden");
    notice($("room-quote"), explain(error), "bad");
    $("room-quote").classList.remove("hidden");
    $("room-box").append($("room-quote"));
  }
});

$("room-leave").addEventListener("click", async () => {
  if (!state.room) return;
  await state.client.leaveRoom(state.room).catch(() => undefined);
  state.room = null;
  $("room").classList.add("hidden");
});

$("room-gift").addEventListener("submit", async (event) => {
  event.preventDefault();
  const target = $("room-quote");
  try {
    const quote = await state.client.quote(state.room, { qty: Number($("room-qty").value) });
    const send = el("button", {}, `Send for ${cards(quote.cost)} cards`);
    send.addEventListener("click", async () => {
      send.disabled = true;
      try {
        await state.client.sendGift(state.room, { qty: Number($("room-qty").value), quote: quote.quote_id });
        notice(target, "Sent: the streamer has the offer.", "ok");
        refreshBalance();
      } catch (error) {
        notice(target, explain(error), "bad");
      }
    });
    target.replaceChildren(el("p", { class: "muted" }, `${quote.viewers} watching: this gift costs ${cards(quote.cost)} cards, valid ${Math.round((quote.expires_at_ms - Date.now()) / 1000)} s.`), send);
  } catch (error) {
    notice(target, explain(error), "bad");
  }
});

$("wish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const room = await state.client.openWish($("wish-kind").value, Number($("wish-target").value));
    state.room = room.room;
    $("room-name").value = room.room;
    renderRoom(room);
    await state.client.joinRoom(room.room);
  } catch (error) {
    notice($("room-quote"), explain(error), "bad");
  }
});

// A reload keeps the session (this tab only).
const saved = sessionStorage.getItem("notecard.signin");
if (saved) {
  const { user, token } = JSON.parse(saved);
  $("signin-user").value = user;
  signIn(user, token).catch((e) => {
    sessionStorage.removeItem("notecard.signin");
    setStatus("signed out");
    $("signin-error").textContent = explain(e);
    $("signin-error").classList.remove("hidden");
  });
}
