// @herald/server's public API (the barrel): the publisher, its types, and local validation.
export { createPublisher, Publisher } from "./publisher.js";
export { HeraldPublishError } from "./errors.js";
export { readSchemas } from "./validate.js";
export type {
  AnyChannels,
  BatchItem,
  ChannelMap,
  ChannelName,
  FetchLike,
  Logger,
  PayloadOf,
  PublisherOptions,
  PublisherStats,
  PublishOptions,
  PublishOutcome,
  SchemaIndex,
} from "./types.js";
