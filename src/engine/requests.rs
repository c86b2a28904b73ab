//! HTTP requests on a connection that has not upgraded: the request head
//! (a PROXY header first, from a trusted proxy), the routes, the answers,
//! and the upgrade itself.

use super::*;

impl Engine {
    /// Bytes of the request head (see `HeadReader`: usually the whole
    /// request comes in one read and is parsed where it lies).
    pub(super) fn on_head(&mut self, key: usize, data: &mut [u8], now: u64) {
        let Some(Phase::Handshaking {
            head, via_proxy, ..
        }) = self.conns.get_mut(key).map(|c| &mut c.phase)
        else {
            return;
        };
        // A PROXY header comes before any byte of the request, in one piece.
        let mut data = data;
        if head.is_empty() {
            match (proxy::proxy_header(data), *via_proxy) {
                (ProxyHeader::Absent, _) => {}
                (ProxyHeader::Present { client, len }, true) => {
                    *via_proxy = false;
                    // LOCAL or UNKNOWN: the proxy's own connection (a health check).
                    let peer = client.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                    self.client_address(key, peer, now);
                    data = &mut data[len..];
                    if data.is_empty() {
                        return;
                    }
                }
                // From an untrusted peer: anyone could claim any address. (A
                // short read that only may be one, "P", is left to the HTTP parser.)
                (ProxyHeader::Bad, false) if !proxy::is_header_start(data) => {}
                (_, _) => {
                    self.stats.refused_proxy_header += 1;
                    return self.reject(key, Reject::BadRequest, false, now);
                }
            }
        }
        let Some(Phase::Handshaking {
            head, via_proxy, ..
        }) = self.conns.get_mut(key).map(|c| &mut c.phase)
        else {
            return;
        };
        let via_proxy = *via_proxy;
        // Out of the connection while the route is acted on, back if incomplete.
        let mut reader = std::mem::take(head);
        match reader.read(data, &self.origins) {
            Ok(Head::Incomplete) => {
                if let Some(Phase::Handshaking { head, .. }) =
                    self.conns.get_mut(key).map(|c| &mut c.phase)
                {
                    *head = reader;
                }
            }
            Err(reject) => self.reject(key, reject, false, now),
            Ok(Head::Complete { request, rest }) => {
                let head_only = request.head_only;
                if via_proxy {
                    // No PROXY header: the proxy's last X-Forwarded-For hop
                    // (or the proxy's own address if it sent none).
                    let client = request
                        .forwarded_for
                        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                    self.client_address(key, client, now);
                    if !matches!(
                        self.conns.get(key).map(|c| &c.phase),
                        Some(Phase::Handshaking { .. })
                    ) {
                        return;
                    }
                }
                match request.answer {
                    Err(reject) => self.reject(key, reject, head_only, now),
                    Ok(route) => self.route(key, route, head_only, rest, now),
                }
            }
        }
    }

    /// Answers a complete request head; `rest` is what came behind it.
    pub(super) fn route(
        &mut self,
        key: usize,
        route: Route,
        head_only: bool,
        rest: &mut [u8],
        now: u64,
    ) {
        // With --private-address, /metrics and /stats live there only, and it
        // serves nothing else (the admin API checks for itself).
        if self.config.private_address.is_some() {
            let private = self.conns.get(key).is_some_and(|c| c.private);
            let for_operators = matches!(route, Route::Metrics | Route::Stats | Route::Health);
            if private != for_operators && !matches!(route, Route::Health | Route::Admin(_)) {
                return self.reject(key, Reject::NotFound, head_only, now);
            }
        }
        // A banned address gets neither the page nor an upgrade, but a clear answer.
        if matches!(route, Route::Upgrade { .. } | Route::Page)
            && let Some(Phase::Handshaking { peer, .. }) = self.conns.get(key).map(|c| &c.phase)
            && let Some(ban) = self.moderation.banned(*peer, now)
        {
            self.stats.refused_banned += 1;
            let answer = response::banned((ban.until - now).div_ceil(1000), &ban.reason);
            return self.respond(key, answer.into(), head_only, now);
        }
        match route {
            Route::Upgrade { accept, plain } => {
                self.open(key, &accept, plain, now);
                // Frames sent right behind the request head belong to the new connection.
                if !rest.is_empty() {
                    self.on_frames(key, rest, now);
                }
            }
            Route::Admin(head) => self.on_admin_head(key, &head, head_only, rest, now),
            Route::Page => {
                self.stats.http_page += 1;
                self.respond(key, Rc::clone(&self.page), head_only, now);
            }
            Route::Health => {
                self.stats.http_health += 1;
                let body: &[u8] = match &self.backplane {
                    Some(probe) if probe().state != "up" => {
                        b"ok; backplane down: chats reach this instance's clients only\n"
                    }
                    _ => b"ok\n",
                };
                let answer = response::ok("text/plain; charset=utf-8", body);
                self.respond(key, answer.into(), head_only, now);
            }
            Route::Stats => {
                self.stats.http_stats += 1;
                let backplane = self.backplane.as_ref().map(|probe| probe());
                let body = self.stats.to_json(self.live(now), backplane);
                let answer = response::ok("application/json", &body);
                self.respond(key, answer.into(), head_only, now);
            }
            Route::Metrics => {
                self.stats.http_metrics += 1;
                let backplane = self.backplane.as_ref().map(|probe| probe());
                let mut process = self
                    .process
                    .as_ref()
                    .map(|probe| probe())
                    .unwrap_or_default();
                // One socket per connection and per Redis connection: counted, not listed.
                let redis = backplane.as_ref().map_or(0, |b| b.connections);
                process.open_fds += (self.conns.len() + redis) as u64;
                let body = self
                    .stats
                    .to_prometheus(self.live(now), backplane, &process);
                let answer = response::ok("text/plain; version=0.0.4; charset=utf-8", &body);
                self.respond(key, answer.into(), head_only, now);
            }
        }
    }

    /// The figures of the moment, for `/stats` and `/metrics`.
    pub(super) fn live(&self, now: u64) -> Live<'_> {
        Live {
            connections: self.conns.len(),
            joined: self.online(),
            uptime_seconds: now.saturating_sub(self.started) as f64 / 1000.0,
            epoch: &self.epoch,
            order: self.cluster.as_ref().map(Cluster::order),
        }
    }

    pub(super) fn open(&mut self, key: usize, accept: &str, plain: bool, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Handshaking { peer, .. } = conn.phase else {
            return;
        };
        let chat = match plain {
            true => ChatState::plain(now, peer, self.config.max_message_size),
            false => ChatState::new(now, peer),
        };
        conn.phase = Phase::Open {
            reader: MessageReader::default(),
            chat,
        };
        conn.plain = plain;
        self.stats.websocket_upgrades += 1;
        self.queue(key, response::switching_protocols(accept).into());
        self.set_timer(key, now + self.config.ping_interval_ms);
        if plain {
            // In the room at once, so a client that only reads gets the chats.
            self.next_guest += 1;
            let name = format!("guest-{}", self.next_guest);
            self.stats.plain_joins += 1;
            self.notice(
                key,
                &format!("* you are {name}; a first line \"/nick NAME\" picks a name"),
            );
            self.join(
                key,
                protocol::name_literal(&name),
                false,
                &Catchup::default(),
                now,
            );
        }
    }

    /// A line of the server's own to a plain-text client.
    pub(super) fn notice(&mut self, key: usize, text: &str) {
        let frame = frame::server_frame(OpCode::Text, &[text.as_bytes()]);
        self.queue(key, frame.into());
    }

    pub(super) fn reject(&mut self, key: usize, reject: Reject, head_only: bool, now: u64) {
        self.stats.rejected(reject);
        self.respond(key, reject.response().into(), head_only, now);
    }

    /// Sends a whole HTTP response (its head alone for `HEAD`), then closes.
    pub(super) fn respond(&mut self, key: usize, response: Rc<[u8]>, head_only: bool, now: u64) {
        let response = match head_only {
            true => response::without_body(&response).into(),
            false => response,
        };
        self.queue(key, response);
        self.drain(key, now);
    }
}
