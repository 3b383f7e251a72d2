// A browser page that talks to Tidings over gRPC-Web with a maintained client library
// (@connectrpc/connect-web's gRPC-Web transport and @bufbuild/protobuf code generated from the
// committed proto/tidings/v1/notifications.proto at test time), nothing of Tidings' own JS client.
// It shows the live unread count in a badge and records every notification seq it receives;
// grpcweb.test.js reads `window.grpcWeb`. Bundled by esbuild into artifacts/grpcweb/bundle.js.
//
// The fragment carries the settings: #token=<user JWT>&grpc=<gRPC listener base URL>&after=<seq>.
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createGrpcWebTransport } from '@connectrpc/connect-web';
import { Notifications } from '../artifacts/grpcweb/gen/tidings/v1/notifications_pb.js';

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get('token');
const transport = createGrpcWebTransport({ baseUrl: params.get('grpc') });
const client = createClient(Notifications, transport);
const headers = { authorization: `Bearer ${token}` };
const badge = document.querySelector('[data-testid="badge"]');

const state = {
  state: 'connecting',
  unread: null,
  seq: null,
  seqs: [],
  error: null,
};
window.grpcWeb = state;

function failed(e) {
  const err = ConnectError.from(e);
  return { code: Code[err.code], message: err.rawMessage };
}

/** A unary call the test can make from inside the page: its code, or 'OK' and the answer. */
window.grpcWebList = async (request) => {
  try {
    const page = await client.list(request, { headers });
    return { code: 'OK', seqs: page.notifications.map((n) => Number(n.seq)), unread: Number(page.unread) };
  } catch (e) {
    return failed(e);
  }
};

async function subscribe() {
  const after = params.has('after') ? BigInt(params.get('after')) : undefined;
  try {
    for await (const ev of client.subscribe({ after }, { headers })) {
      switch (ev.event.case) {
        case 'notification':
          state.seqs.push(Number(ev.event.value.seq));
          break;
        case 'unread':
          state.state = 'live';
          state.unread = Number(ev.event.value.unread);
          state.seq = Number(ev.event.value.seq);
          badge.textContent = String(state.unread);
          badge.hidden = state.unread === 0;
          break;
        case 'resync':
          state.resync = Number(ev.event.value.seq);
          break;
        default:
          break;
      }
    }
    state.state = 'ended';
  } catch (e) {
    state.state = 'error';
    state.error = failed(e);
  }
}

subscribe();
