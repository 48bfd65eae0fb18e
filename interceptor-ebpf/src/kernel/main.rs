//! interceptor's kernel programs: one module per hook, the decisions in the shared library.
#![no_std]
#![no_main]

// One module per hook, named after its section; each holds one program named after what it does.
mod connect4;
mod connect6;
mod getpeername4;
mod getpeername6;
mod getsockopt;
mod post_bind4;
mod post_bind6;
mod recvmsg4;
mod recvmsg6;
mod sendmsg4;
mod sendmsg6;
mod setsockopt;
mod sk_lookup;
mod sk_msg;
mod sock_create;
mod sockops;

// What the hooks share.
mod accelerate;
mod capture_listener;
mod family;
mod helpers;
mod linux;
mod maps;
mod redirect;
mod restore;
mod rule_sets;
mod trace;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
