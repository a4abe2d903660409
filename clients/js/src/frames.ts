// The frames of plexus.v1.json (PROTOCOL.md §3): one JSON object per WebSocket text message.

import type { ErrorBody } from "./errors.js";

/** A channel's position: its epoch and the offset of a publication in it. */
export interface Position {
  epoch: string;
  offset: number;
}

/** A frame, loosely typed: `t` says which fields it has. */
export interface Frame {
  t: string;
  id?: number;
  m?: string;
  d?: unknown;
  e?: ErrorBody;
  ch?: string;
  o?: number;
  n?: number;
  credit?: number;
  since?: Position;
  filter?: unknown;
  token?: string;
  data?: unknown;
  conn?: string;
  node?: string;
  heartbeat?: number;
  user?: string;
}

/** A frame on the wire: a text message (JSON) or a binary one (MessagePack). */
export type Wire = string | Uint8Array;

/** How frames are written (PROTOCOL.md §2): the subprotocol, and its encoding. */
export interface Codec {
  readonly subprotocol: string;
  /** Throws for a value the encoding cannot hold. */
  encode(frame: Frame): Wire;
  /** The frame in a message, or `undefined` if it is not one of this codec. */
  decode(data: unknown): Frame | undefined;
}

/** A MessagePack implementation, such as `@msgpack/msgpack`'s `encode` and `decode`. */
export interface MessagePack {
  encode(value: unknown): Uint8Array;
  decode(data: Uint8Array): unknown;
}

function frameOf(value: unknown): Frame | undefined {
  if (typeof value !== "object" || value === null || typeof (value as Frame).t !== "string") {
    return undefined;
  }
  return value as Frame;
}

/** `plexus.v1.json`: one JSON object per text message. */
export const json: Codec = {
  subprotocol: "plexus.v1.json",
  encode: (frame) => JSON.stringify(frame),
  decode(data) {
    if (typeof data !== "string") return undefined;
    try {
      return frameOf(JSON.parse(data));
    } catch {
      return undefined;
    }
  },
};

/** `plexus.v1.msgpack`: one MessagePack map per binary message, with `msgpack`'s codec. */
export function msgpack(msgpack: MessagePack): Codec {
  return {
    subprotocol: "plexus.v1.msgpack",
    encode: (frame) => msgpack.encode(withoutUndefined(frame)),
    decode(data) {
      const bytes =
        data instanceof Uint8Array ? data : data instanceof ArrayBuffer ? new Uint8Array(data) : undefined;
      if (!bytes) return undefined;
      try {
        return frameOf(msgpack.decode(bytes));
      } catch {
        return undefined;
      }
    },
  };
}

/** MessagePack writes `undefined` fields as nil; the protocol means "absent" by leaving them out. */
function withoutUndefined(frame: Frame): Frame {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(frame)) if (value !== undefined) out[key] = value;
  return out as unknown as Frame;
}
