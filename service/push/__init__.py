"""Live updates: everything that carries a job's events from Redis to a client's SSE stream or WebSocket.

Dependencies run one way: service/api (the endpoints: who may watch what, refusals, stream slots) → push →
events / models / store / jobs. Nothing here imports the api package; what push needs of the web process is the
`PushState` Protocol (state.py), which api's AppState fits.

The modules:
- gateway.py: one Redis pub/sub subscription per web process (a channel per user with clients here), fanned out
  to a `Subscriber` per client: a small bounded buffer that coalesces progress, merges text deltas, and flags
  `resync` when it overflows or the subscription was re-made. Also parked groups: clients of one job served by a
  lane in one loop.
- watch.py: `JobWatch`, one job followed by one client in seq order, catching up from the job's Redis Stream;
  `watch_events`, the SSE stream of one job; `sse_lane`/`ws_lane`, the lanes for clients that follow one job.
- multiwatch.py: `MultiWatch`, one client following many jobs (a JobWatch each, or "mine": every job of the
  user); `mine_events`, the SSE stream of every job, with its `<job_id>:<seq>,…` cursor, and `MineDirect`, its
  live events written from the dispatch while it idles.
- ws.py: `WsSession`, one WebSocket: the client's messages checked and rate-limited, a reader task and a writer.
- frames.py: an event's wire encodings (SSE frame, HTTP chunk, WebSocket frame), made once per event, not per client.
- wire.py: the direct write: pre-encoded bytes to a client's socket through uvicorn's private objects (pinned).
- fastpath.py: the switches of those fast paths; each turns itself off on its first error (normal path serves).
- slim.py: what uvicorn keeps per WebSocket after the handshake, trimmed (pinned internals too, a switch of its own).
- gcfreeze.py: `GcFreezer`, gc.freeze() once the open streams settle, so full collections skip what they hold.
- sse.py: `SseResponse`, the light ASGI response every SSE stream is sent with.
- positions.py: `PositionTicker`, a queued job's live place and wait, pushed to this process's watchers only.
- state.py: `PushState`, what push needs of the web process.

How an event flows: a worker commits it to the store, then one Lua call appends it to the job's Redis Stream and
publishes it on the user's channel (events.py). The gateway's subscription task receives it, decodes it once, and
offers it to each Subscriber of that user watching the job; each Subscriber buffers it and wakes its client's task
(`watch_events`, `mine_events`, or a WsSession's writer), which checks it against its JobWatch (seq order, no
duplicate) and sends the frame frames.py made once for all clients. An idle client that follows one job is
parked instead: its job's group is served from the dispatch itself by the lane, one `transport.write` per client
(wire.py), with no task woken; a WebSocket writer may likewise take the event directly (`WsSession.fast`). Whatever
the fast path cannot serve (a socket with unsent bytes, an error) takes the normal path. A Subscriber flagged
`resync` makes its client re-read the Stream from the last seq it sent, so nothing is lost, only later.
"""
