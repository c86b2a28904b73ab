//! `websocket-public-chat`: parse the flags, listen, run until the duration
//! ends or SIGINT/SIGTERM, print the statistics.

use std::process::ExitCode;

use websocket_public_chat::config::Config;
use websocket_public_chat::event_loop::Server;
use websocket_public_chat::sys;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(config) => config,
        Err(line) => {
            eprintln!("websocket-public-chat: {line}");
            return ExitCode::from(2);
        }
    };
    let fd_limit = sys::raise_fd_limit();
    let echo = config.echo;
    let server = match Server::bind(config, fd_limit) {
        Ok(server) => server,
        Err(line) => {
            eprintln!("websocket-public-chat: {line}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => println!(
            "listening on {addr} (max {} connections{}{})",
            server.max_conns(),
            if echo { ", echo mode" } else { "" },
            server
                .metrics_addr()
                .map_or(String::new(), |m| format!("; private listener on {m}"))
        ),
        Err(e) => eprintln!("websocket-public-chat: {e}"),
    }
    match server.run() {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("websocket-public-chat: event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
