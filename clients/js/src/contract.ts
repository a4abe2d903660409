// Typed contracts: a descriptor generated from the server's `$contracts`
// (`plexus codegen ts`) gives typed stubs for calling a contract and typed handlers for
// serving one the server calls on this client.

import type { CallContext } from "./incoming.js";
import type { CallOptions, StreamOptions } from "./options.js";
import type { CallStream } from "./stream.js";

/** What a contract method is on the wire. */
export type MethodKind = "request" | "notification" | "stream";

/** A method's types: its parameter (`void`: none) and, for a request or stream, its result or items. */
export interface MethodTypes {
  kind: MethodKind;
  params: unknown;
  result?: unknown;
}

/** A contract: its methods' wire names and kinds at run time, their types at compile time. */
export interface Contract<
  M extends { [method: string]: MethodTypes } = { [method: string]: MethodTypes },
  S extends "server" | "client" = "server" | "client",
> {
  readonly name: string;
  /** Who serves it: the server (call it with `client.contract`), or clients (`client.serve`). */
  readonly servedBy: S;
  readonly methods: {
    readonly [K in keyof M]: { readonly kind: M[K]["kind"]; readonly name: string; readonly timeout?: number };
  };
  /** Never present: carries the types. */
  readonly types?: M;
}

/** Typed calls of a contract the server serves. */
export type ContractStub<M> = {
  [K in keyof M]: M[K] extends { kind: "request"; params: infer P; result: infer R }
    ? (params: P, options?: CallOptions) => Promise<R>
    : M[K] extends { kind: "notification"; params: infer P }
      ? (params: P, options?: { node?: string }) => void
      : M[K] extends { kind: "stream"; params: infer P; result: infer I }
        ? (params: P, options?: StreamOptions) => CallStream<I>
        : never;
};

/** An implementation of a contract the server calls on this client. */
export type ContractImplementation<M> = {
  [K in keyof M]: M[K] extends { kind: "request"; params: infer P; result: infer R }
    ? (params: P, ctx: CallContext) => R | Promise<R>
    : M[K] extends { kind: "notification"; params: infer P }
      ? (params: P, ctx: CallContext) => void | Promise<void>
      : M[K] extends { kind: "stream"; params: infer P; result: infer I }
        ? (params: P, ctx: CallContext) => AsyncIterable<I> | Iterable<I>
        : never;
};

/** What a stub calls through (the client's own methods). */
export interface Caller {
  request(method: string, params: unknown, options: CallOptions): Promise<unknown>;
  notify(method: string, params: unknown, options: { node?: string }): void;
  stream(method: string, params: unknown, options: StreamOptions): CallStream<unknown>;
}

/**
 * Builds the stub of `contract` over `caller`. A request's own timeout (the contract's
 * `timeout_ms`) is its default; streams have none (end one with a signal).
 */
export function stub<M extends { [method: string]: MethodTypes }>(
  caller: Caller,
  contract: Contract<M, "server">,
): ContractStub<M> {
  // No prototype: a method named `__proto__` is a method like any other.
  const calls: Record<string, unknown> = Object.create(null);
  for (const [key, method] of Object.entries(contract.methods) as [string, Contract["methods"][string]][]) {
    const { name, kind, timeout } = method;
    calls[key] =
      kind === "request"
        ? (params: unknown, options: CallOptions = {}) =>
            caller.request(name, params, { ...options, timeout: options.timeout ?? timeout })
        : kind === "notification"
          ? (params: unknown, options = {}) => caller.notify(name, params, options)
          : (params: unknown, options: StreamOptions = {}) => caller.stream(name, params, options);
  }
  return calls as ContractStub<M>;
}
