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

export const SUBPROTOCOL = "plexus.v1.json";

export function encode(frame: Frame): string {
  return JSON.stringify(frame);
}

/** The frame in a text message, or `undefined` if it is not one. */
export function decode(text: string): Frame | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null || typeof (value as Frame).t !== "string") {
    return undefined;
  }
  return value as Frame;
}
