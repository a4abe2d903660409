// The chat page: the TypeScript client with the contracts generated from the server
// (contracts.ts: `plexus codegen ts`), so every call, handler and answer here is type-checked.

import { connect, type Client, PlexusError } from "../../../clients/js/src/index.js";
import { Chat, type Message, Member } from "./contracts.js";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const url = new URL("/ws", location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";

let me: string | undefined;
let lastSeen = 0;
let typingTimer: ReturnType<typeof setTimeout> | undefined;

function show(message: Message): void {
  if (message.id <= lastSeen) return; // a message the history already showed
  lastSeen = message.id;
  const line = document.createElement("div");
  line.className = message.from === me ? "message mine" : "message";
  const from = document.createElement("b");
  from.textContent = message.from;
  line.append(from, document.createTextNode(message.text));
  line.dataset.id = String(message.id);
  $("messages").append(line);
  line.scrollIntoView({ block: "end" });
}

function failed(error: unknown): void {
  $("error").textContent = error instanceof Error ? error.message : String(error);
}

const client: Client = await connect(url.href);
const chat = client.contract(Chat);

// What the server calls on this page.
client.serve(Member, {
  newMessage(message) {
    show(message);
    if (!document.hidden) void markRead();
  },
  typing(name) {
    $("typing").textContent = `${name} is typing…`;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => ($("typing").textContent = ""), 3000);
  },
  areYouThere: () => (document.hidden ? "away" : "here"),
});

async function markRead(): Promise<void> {
  const unread = await chat.markRead({ upTo: lastSeen });
  $("unread").textContent = unread > 0 ? `${unread} unread` : "";
}

/**
 * Joins as `name`, waiting while the name is still held: after a reconnect, by this page's
 * previous connection until the server sees that it is gone.
 */
async function takeSeat(name: string): Promise<Message[]> {
  for (let wait = 250; ; wait *= 2) {
    try {
      return await chat.join(name);
    } catch (error) {
      if (!(error instanceof PlexusError && error.code === "CONFLICT" && me === name && wait < 30_000)) throw error;
      await new Promise((wake) => setTimeout(wake, wait));
    }
  }
}

async function join(name: string): Promise<void> {
  name = name.trim();
  const recent = await takeSeat(name);
  me = name;
  recent.forEach(show);
  // What was said while this page was away (a reconnect), beyond the last 50.
  for await (const message of chat.history(lastSeen)) show(message);
  $<HTMLFormElement>("join").hidden = true;
  $<HTMLFormElement>("compose").hidden = false;
  $("error").textContent = "";
}

client.onStatus((status) => {
  $("status").textContent = status;
  // A new session is a new connection: take the seat again.
  if (status === "connected" && me !== undefined) join(me).catch(failed);
});
$("status").textContent = "connected";

$<HTMLFormElement>("join").addEventListener("submit", (event) => {
  event.preventDefault();
  join($<HTMLInputElement>("name").value).catch(failed);
});

$<HTMLFormElement>("compose").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $<HTMLInputElement>("text");
  chat
    .send({ text: input.value })
    .then(() => (input.value = ""))
    .catch(failed);
});

// The others are told at most every 2 s.
let typingSent = 0;
$("text").addEventListener("input", () => {
  if (Date.now() - typingSent < 2000) return;
  typingSent = Date.now();
  chat.typing();
});

$("who-button").addEventListener("click", () => {
  chat
    .who()
    .then((members) => {
      $("who").textContent = members.map((m) => `${m.name} (${m.status})`).join(", ");
    })
    .catch(failed);
});

/** What the browser test drives the page with. */
declare global {
  interface Window {
    chat: { client: Client; join(name: string): Promise<void> };
  }
}
window.chat = { client, join };
