// plexus's TypeScript client, for browsers and Node 20+.

export { Client, connect } from "./client.js";
export type { Status } from "./client.js";
export type { CallOptions, ClientOptions, StreamOptions } from "./options.js";
export type { WebSocketConstructor, WebSocketLike } from "./open.js";
export type { ServerChannelEvent } from "./server-channels.js";
export { waitForService } from "./mesh.js";
export type { ProviderInfo, ServiceWatchItem } from "./mesh.js";
export type { ReconnectOptions } from "./backoff.js";
export { Subscription } from "./channel.js";
export type { ChannelEvent, JoinOptions, Member } from "./channel.js";
export { ConnectError, PlexusError } from "./errors.js";
export type { ErrorBody, ErrorCode } from "./errors.js";
export type { MessagePack, Position } from "./frames.js";
export type { CallContext, NotificationHandler, RequestHandler, StreamHandler } from "./incoming.js";
export { CallStream } from "./stream.js";
export type { Contract, ContractImplementation, ContractStub, MethodKind, MethodTypes } from "./contract.js";
