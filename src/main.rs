//! The `tidings` command: serve, mint tokens, print the OpenAPI document.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tidings::auth::parse_ttl;
use tidings::configuration::Settings;
use tidings::startup::{authenticator, Application};

/// jemalloc instead of glibc's malloc. A delivery allocates and frees many small, short-lived
/// buffers across worker threads; in the unicast benchmark glibc's malloc and free were 18 % of
/// the server's CPU (perf), and jemalloc cut server CPU per 1,000 delivered by about 9 % with
/// the same idle memory per connection (`bench/RESULTS.md`, allocator A/B). The library and
/// the tests keep the system allocator: this is a choice of the binary that serves.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Notifications with a durable inbox and live delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Mint a token with the configured key.
    Token {
        /// A user token for this user id.
        #[arg(long, conflicts_with = "service", required_unless_present = "service")]
        user: Option<String>,
        /// A service token (scope notifications:publish) for this service name.
        #[arg(long)]
        service: Option<String>,
        /// Lifetime, such as 15m, 1h or 30d. Default: 1h for users, 30d for services.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<std::time::Duration>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Print a new VAPID key pair for Web Push (TIDINGS__WEBPUSH__VAPID_PRIVATE_KEY).
    VapidKeys,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(),
        Command::Token { user, service, ttl } => token(user, service, ttl),
        Command::Openapi => {
            print!("{}", tidings::routes::openapi::document());
            Ok(())
        }
        Command::VapidKeys => {
            let key = tidings::domain::VapidKey::generate();
            println!(
                "TIDINGS__WEBPUSH__VAPID_PRIVATE_KEY={}",
                key.private_key_b64()
            );
            println!("# The application server key browsers subscribe with (GET /v1/push/vapid-public-key serves it):");
            println!("# {}", key.public_key());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidings: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    tidings::telemetry::init(&settings.log);
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings)
            .await
            .context("could not start")?;
        app.run_until_stopped().await
    })
}

fn token(
    user: Option<String>,
    service: Option<String>,
    ttl: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let auth = authenticator(&settings)?;
    let demo_user = user.clone();
    let token = match (user, service) {
        (Some(user), _) => {
            auth.mint_user(&user, ttl.unwrap_or(std::time::Duration::from_secs(3600)))?
        }
        (None, Some(service)) => auth.mint_service(
            &service,
            ttl.unwrap_or(std::time::Duration::from_secs(30 * 86_400)),
        )?,
        (None, None) => anyhow::bail!("give --user or --service"),
    };
    println!("{token}");
    if let Some(user) = demo_user {
        // On stderr, so `TOKEN=$(tidings token --user alice)` captures only the token.
        let host = settings.server.listen.replace("0.0.0.0", "127.0.0.1");
        eprintln!("Demo page for {user}: http://{host}/demo#token={token}");
    }
    Ok(())
}
