//! An application that runs as a peel: it connects with the peel's creds (server, CA pin and
//! the master's curve key from the profile beside them), and answers `test.ping` on its command
//! subject, only into the admin's or the master's inbox, keeping its identity JWT renewed.
//!
//! ```sh
//! zester creds issue web-01                      # on the master
//! cargo run --example peel -- ~/.local/share/zester/peels/web-01.creds
//! zester cmd web-01 test.ping                    # web-01  true
//! ```

use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let creds = std::env::args()
        .nth(1)
        .ok_or("usage: peel <creds file> (its profile <id>.json beside it)")?;
    let peel = zester::peel::Peel::from_creds(creds.as_ref())?;
    let client = peel.connect().await?;
    // Renew the identity JWT before it expires, as `zester peel run` does.
    let _renewal = peel.keep_renewed(&client);
    println!("connected as peel {} to {}", peel.id(), peel.server());
    let mut commands = client.subscribe(peel.command_subject()).await?;
    while let Some(command) = commands.next().await {
        let Some(reply) = command.reply.filter(|r| zester::peel::Peel::may_answer(r)) else {
            continue;
        };
        let answer = match std::str::from_utf8(&command.payload) {
            Ok(text) if text.contains("test.ping") => "true",
            _ => r#"{"error":"this example only knows test.ping"}"#,
        };
        client.publish(reply, answer.into()).await?;
    }
    Ok(())
}
