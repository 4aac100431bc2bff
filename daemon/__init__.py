"""edged daemon: transports, services, scheduler, sessions and configuration."""
