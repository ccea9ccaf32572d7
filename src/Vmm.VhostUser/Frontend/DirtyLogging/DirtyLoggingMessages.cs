namespace Vmm.VhostUser.Frontend;

/// <summary>
/// Start logging the guest pages the back-end writes (vhost-user.rst, "Migration"): SET_LOG_BASE
/// with a new sealed-memfd log sized for guest memory, SET_FEATURES with VHOST_F_LOG_ALL, and
/// SET_VRING_ADDR with VHOST_VRING_F_LOG for every running ring. Answered with
/// <see cref="DirtyLoggingStarted"/>; fails with <see cref="NotSupportedException"/> when the
/// back-end offers no LOG_ALL or LOG_SHMFD, and with <see cref="InvalidOperationException"/>
/// before the device has guest memory (no queue started yet). Logging on survives reconnects
/// (the replay sends the log again) and memory growth (a larger log replaces it).
/// </summary>
public sealed class StartDirtyLogging : IDeviceCommand
{
    public static readonly StartDirtyLogging Instance = new();

    private StartDirtyLogging()
    {
    }
}

/// <summary>Logging is on; <paramref name="Log"/> is what to harvest (from any thread) until it stops.</summary>
public sealed record DirtyLoggingStarted(VhostUserDirtyLog Log);

/// <summary>
/// Stop logging: SET_FEATURES without VHOST_F_LOG_ALL and SET_VRING_ADDR without
/// VHOST_VRING_F_LOG for every running ring; the log is closed (bits not harvested are dropped).
/// Answered with <see cref="DirtyLoggingStopped"/>, also when logging was off.
/// </summary>
public sealed class StopDirtyLogging : IDeviceCommand
{
    public static readonly StopDirtyLogging Instance = new();

    private StopDirtyLogging()
    {
    }
}

public sealed class DirtyLoggingStopped
{
    public static readonly DirtyLoggingStopped Instance = new();

    private DirtyLoggingStopped()
    {
    }
}
