/* Entry for the data plane: the generated decision code as an sk_skb verdict program on a SOCKHASH
 * (verdict only, no stream parser: each skb is seen once, from its first byte; see DESIGN.md).
 *
 * Downstream sockets are keyed {cookie, 0}; the upstream for cluster slot k of the same connection
 * is {cookie, k}. Bytes from an upstream go back to its client (`peers`). Per request:
 *   forward -> redirected in kernel to the chosen upstream socket;
 *   reply   -> passed to the agent's socket queue, the agent writes Envoy's exact reply
 *              (an in-kernel rewrite that changes the skb's length breaks TCP's read accounting on
 *              this kernel: docs/dataplane.md) and acknowledges it in `acks`;
 *   punt    -> the connection is marked punted and from then on every byte goes to the agent,
 *              which relays it to Envoy.
 * A request that arrives while a reply is unacknowledged punts, so a reply is never overtaken.
 * Nor does any answer overtake a forwarded request's response (docs/bugs/0008): the program follows
 * the responses' framing (http1_response.h) and counts forwards (`sent`) and response ends
 * (`done`); a forward to another upstream while responses are in flight punts, and the agent
 * writes its own answers (replies, Envoy's after a punt) only once done == sent and the bytes
 * redirected to the client have left its socket's queue (`to_client`, checked against TCP_INFO).
 *
 * The agent does not watch sockets for bytes while their connection is on the fast path (each
 * segment's data_ready would wake it once per request, for nothing): every verdict that leaves bytes
 * for it (a reply, the punt) updates the connection's state, then writes the cookie and that state
 * to `for_agent`, and the agent then watches that socket until it owes nothing. The record precedes
 * the bytes: the watch catches the bytes whenever they land, and bytes the agent reads are always
 * explained by a record already in the ring.
 * A record the ring cannot take is counted in `lost`, and the agent then reads every connection.
 */
struct sock_key {
    u64 cookie;
    u32 slot;
    u32 pad;
};

/* bcc 0.26 declares bpf_get_socket_cookie as returning 32 bits; cookies are 64. */
static u64 (*l7fp_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* An upstream socket's peer: the client its bytes go back to, and its own slot. */
struct peer {
    struct sock_key client;
    u32 slot;
    u32 pad;
};

/* bcc 0.26's BPF_SOCKHASH, plus `lookup` (a socket reference, for l7fp_upstream_open): the kernel
 * allows map lookups on a SOCKHASH from programs since 5.10, bcc's table declares none. */
struct sockets_table_t {
    struct sock_key key;
    int leaf;
    int *(*lookup)(struct sock_key *);
    int (*update)(struct sock_key *, int *);
    int (*delete)(struct sock_key *);
    int (*sk_redirect_hash)(void *, void *, u64);
    u32 max_entries;
};
__attribute__((section("maps/sockhash"))) struct sockets_table_t sockets = {.max_entries = 65536};
BPF_ANNOTATE_KV_PAIR(sockets, struct sock_key, int);
BPF_HASH(peers, u64, struct peer, 65536);
BPF_F_TABLE("hash", u64, struct conn, conns, 16384, BPF_F_NO_PREALLOC);
/* Replies the agent has written. */
BPF_HASH(acks, u64, u32, 16384);
BPF_ARRAY(tables, struct tables, 1);
BPF_PROG_ARRAY(progs, 3);
BPF_PERCPU_ARRAY(counts, u64, N_VERDICTS);
BPF_RINGBUF_OUTPUT(for_agent, 16);
BPF_ARRAY(lost, u64, 1);

static __always_inline void l7fp_count(u32 v)
{
    u32 index = v & (N_VERDICTS - 1);
    u64 *n = counts.lookup(&index);
    if (n)
        *n += 1;
}

/* What the agent learns from a record: the connection's state just after the verdict (a copy, so
 * the agent need not read `conns`, whose values carry the 4 KiB request buffer). */
struct agent_record {
    u64 cookie;
    u32 mode;
    u32 replies;
    u32 reply;
    u32 in_flight;   /* forwarded requests whose responses have not ended; ~0: framing lost */
    u64 to_client;   /* response bytes redirected to the client so far */
};

static __always_inline void l7fp_tell_agent(u64 cookie, const struct conn *c)
{
    /* `done` before `to_client`: the response path adds to `to_client` before it counts the end,
     * so a record that shows the end also shows its bytes (x86 keeps loads in order). */
    u32 done = *(volatile const u32 *)&c->done;
    asm volatile("" ::: "memory");
    u64 to_client = *(volatile const u64 *)&c->to_client;
    u32 in_flight = *(volatile const u32 *)&c->untracked ? ~0U : c->sent - done;
    struct agent_record r = {.cookie = cookie, .mode = c->mode, .replies = c->replies, .reply = c->reply,
                             .in_flight = in_flight, .to_client = to_client};
    if (for_agent.ringbuf_output(&r, sizeof(r), 0) < 0) {
        u32 zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
}

static __always_inline int l7fp_punt(struct conn *c, u64 cookie, u32 v)
{
    c->mode = MODE_PUNTED;
    c->punt = v;
    l7fp_tell_agent(cookie, c);
    l7fp_count(v);
    return SK_PASS;
}

static __always_inline struct tables *l7fp_tables(void)
{
    u32 zero = 0;
    return tables.lookup(&zero);
}

/* The state of this skb's connection (NULL: not one the agent adopted), and its cookie. */
static __always_inline struct conn *l7fp_conn(struct __sk_buff *skb, u64 *cookie)
{
    *cookie = l7fp_cookie(skb);
    return conns.lookup(cookie);
}

int l7fp_entry(struct __sk_buff *skb)
{
    u64 cookie = l7fp_cookie(skb);
    struct peer *peer = peers.lookup(&cookie);
    if (peer) { /* a response: its framing followed, then straight back to the client */
        struct sock_key back = peer->client;
        if (skb->len == 0) /* the upstream's FIN: redirected, an empty skb fails the client with EPIPE */
            return SK_PASS;
        struct conn *c = conns.lookup(&back.cookie);
        if (c) {
            __sync_fetch_and_add(&c->to_client, skb->len);
            if (peer->slot != c->fwd_slot) /* not the upstream the requests in flight went to */
                c->untracked = 1;
            if (!c->untracked) {
                c->roff = 0;
                progs.call(skb, 2);
                c->untracked = 1; /* the tail call failed */
            }
        }
        return sockets.sk_redirect_hash(skb, &back, 0);
    }
    struct conn *c = conns.lookup(&cookie);
    struct tables *t = l7fp_tables();
    if (!c || !t)
        return SK_PASS; /* not ours yet: the agent reads it */
    if (c->mode != MODE_FAST || skb->len == 0)
        return SK_PASS;
    u32 *acked = acks.lookup(&cookie);
    if (c->replies != (acked ? *acked : 0))
        return l7fp_punt(c, cookie, V_REPLY_PENDING);
    if (l7fp_load(skb, c) < 0)
        return l7fp_punt(c, cookie, V_INCOMPLETE);
    l7fp_scan(c, t);
    progs.call(skb, 0);
    return l7fp_punt(c, cookie, V_NO_STATE);
}

/* Whether the upstream socket behind `key` may still be written to and answer (docs/bugs/0011). An
 * upstream's FIN is taken (CLOSE_WAIT) before the program sees the bytes it came with, so a request
 * the client sends after reading the last response of an upstream that closed finds it closed here,
 * however late the agent learns of the close. No socket (the agent dropped it): not open either. */
static __always_inline int l7fp_upstream_open(struct sock_key *key)
{
    struct bpf_sock *sk = (struct bpf_sock *)sockets.lookup(key);
    if (!sk)
        return 0;
    int open = sk->state == BPF_TCP_ESTABLISHED;
    bpf_sk_release(sk);
    return open;
}

static __always_inline int l7fp_act(struct __sk_buff *skb, struct conn *c, const struct tables *t, u64 cookie, u32 v)
{
    u32 word = t->verdict[v & (N_VERDICTS - 1)];
    u32 kind = word >> 16;
    if (kind == KIND_FORWARD) {
        u32 slot = word & 0xffff;
        u32 in_flight = c->sent - c->done;
        /* Another upstream would answer before this one ends (or a HEAD bit would be reused). */
        if (!c->untracked && in_flight != 0 && (slot != c->fwd_slot || in_flight >= 63))
            return l7fp_punt(c, cookie, V_ANSWER_ORDER);
        struct sock_key up = {.cookie = cookie, .slot = slot, .pad = 0};
        /* A closed upstream, or one whose response announced its close (http1_response.h): the
         * request goes to Envoy, which opens upstream connections of its own, as it does itself. */
        if (c->upstream_closed || !l7fp_upstream_open(&up))
            return l7fp_punt(c, cookie, V_UPSTREAM_CLOSED);
        if (sockets.sk_redirect_hash(skb, &up, 0) != SK_PASS)
            return l7fp_punt(c, cookie, V_NO_UPSTREAM);
        u64 bit = 1ULL << (c->sent & 63);
        u64 head = L7FP_ZERO((BYTE(c, 0) ^ 'H') | (BYTE(c, 1) ^ 'E') | (BYTE(c, 2) ^ 'A') | (BYTE(c, 3) ^ 'D') |
                             (BYTE(c, 4) ^ ' '));
        c->heads = (c->heads & ~bit) | (bit & (0 - head));
        c->fwd_slot = slot;
        c->fwd_ns[c->sent & 63] = bpf_ktime_get_ns();
        asm volatile("" ::: "memory"); /* its time before its count: the agent reads `sent` first */
        c->sent += 1; /* before the upstream can answer: the redirect happens when this returns */
        l7fp_count(v);
        return SK_PASS;
    }
    if (kind == KIND_REPLY) {
        if (c->end != c->pos[P_HEADEND])
            return l7fp_punt(c, cookie, V_REPLY_WITH_BODY);
        c->replies += 1;
        c->reply = v;
        l7fp_tell_agent(cookie, c);
        l7fp_count(v);
        return SK_PASS;
    }
    return l7fp_punt(c, cookie, v);
}

int l7fp_frame_request(struct __sk_buff *skb)
{
    u64 cookie;
    struct conn *c = l7fp_conn(skb, &cookie);
    struct tables *t = l7fp_tables();
    if (!c || !t)
        return SK_PASS;
    u32 v = l7fp_frame(c, t, skb->len);
    if (v != V_OK)
        return l7fp_punt(c, cookie, v);
    progs.call(skb, 1);
    return l7fp_punt(c, cookie, V_NO_STATE);
}

int l7fp_decide(struct __sk_buff *skb)
{
    u64 cookie;
    struct conn *c = l7fp_conn(skb, &cookie);
    struct tables *t = l7fp_tables();
    if (!c || !t)
        return SK_PASS;
    return l7fp_act(skb, c, t, cookie, l7fp_dag(c, t));
}

/* Tail-called from l7fp_entry for each upstream segment (and from itself, one step each). */
int l7fp_frame_response(struct __sk_buff *skb)
{
    u64 cookie = l7fp_cookie(skb);
    struct peer *peer = peers.lookup(&cookie);
    if (!peer)
        return SK_DROP; /* the agent is closing this connection */
    struct sock_key back = peer->client;
    struct conn *c = conns.lookup(&back.cookie);
    if (c && l7fp_resp_step(skb, c)) {
        progs.call(skb, 2);
        c->untracked = 1; /* past the kernel's tail-call limit */
    }
    return sockets.sk_redirect_hash(skb, &back, 0);
}
