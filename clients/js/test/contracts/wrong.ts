// Misuses the chat example's generated contracts: every line marked `// error TSnnnn` must
// fail to compile with that code, and no other line may.

import { connect } from "../../src/index.js";
import { Chat, Member } from "../../../../examples/chat/web/contracts.js";

const client = await connect("ws://127.0.0.1:8790/ws");
const chat = client.contract(Chat);
await chat.send({ text: 42 }); // error TS2322
await chat.send({ body: "hi" }); // error TS2353
const unread: string = await chat.markRead({ upTo: 1 }); // error TS2322
await chat.join(); // error TS2554
chat.shout("hi"); // error TS2339
client.contract(Member); // error TS2345
client.serve(Chat, {}); // error TS2345
client.serve(Member, { newMessage: () => {}, typing: () => {} }); // error TS2345
client.serve(Member, { newMessage: () => {}, typing: () => {}, areYouThere: () => "maybe" }); // error TS2322
for await (const message of chat.history(0)) message.body; // error TS2339
console.log(unread);
