// Uses the chat example's generated contracts as they are meant to be used: compiles.

import { connect } from "../../src/index.js";
import { Chat, Member, type Message, type Status } from "../../../../examples/chat/web/contracts.js";

const client = await connect("ws://127.0.0.1:8790/ws");
const chat = client.contract(Chat);
const recent: Message[] = await chat.join("ada");
const sent: Message = await chat.send({ text: "hi" }, { timeout: 1000 });
const unread: number = await chat.markRead({ upTo: sent.id });
chat.typing();
for (const { name, status } of await chat.who()) console.log(name, status satisfies Status);
for await (const message of chat.history(0)) console.log(message.from, message.text);
client.serve(Member, {
  newMessage: (message) => console.log(message.id, message.text),
  typing: (name) => console.log(`${name} is typing`),
  areYouThere: async () => "here" as const,
});
console.log(recent.length, unread);
