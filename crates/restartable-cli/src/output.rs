//! Standard output that cannot be written (a full disk, `> /dev/full`):
//! one line on stderr and exit status 1, not a panic with a backtrace.
//! (A closed pipe ends the program by SIGPIPE, as for any Unix tool.)

/// Installs the panic hook that turns `println!`'s write failures into a
/// clean exit; every other panic goes to the hook that was there before.
pub fn exit_cleanly_on_write_errors() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        match message {
            Some(m) if m.starts_with("failed printing to stdout") => {
                eprintln!("restartable: cannot write the output: {m}");
                std::process::exit(1);
            }
            _ => previous(info),
        }
    }));
}
