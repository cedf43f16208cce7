// k6 load script for `python -m benchmarks.k6_check`: closed-loop unary Recommend.
// Env: TARGET (host:port), HISTORIES (path to a JSON list of item-id lists), K.
import grpc from 'k6/net/grpc';
import { check } from 'k6';

const histories = JSON.parse(open(__ENV.HISTORIES));
const client = new grpc.Client();

export default function () {
  if (__ITER === 0) {
    client.connect(__ENV.TARGET, { plaintext: true, reflect: true });
  }
  const history = histories[(__VU * 7919 + __ITER) % histories.length];
  const response = client.invoke('recsys.v1.RecommenderService/Recommend', {
    history_item_ids: history,
    k: parseInt(__ENV.K || '10'),
  });
  check(response, { 'status is OK': (r) => r && r.status === grpc.StatusOK });
}
