using Akka.Actor;
using Vmm.Core.Memory;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// Dirty-page logging on a live connection, in QEMU's order (vhost_migration_log, vhost_dev_set_log):
/// SET_LOG_BASE, SET_FEATURES with VHOST_F_LOG_ALL, then SET_VRING_ADDR with VHOST_VRING_F_LOG per
/// running ring; stopping clears both again (vhost-user.rst, "Migration").
/// </summary>
public sealed partial class VhostUserConnectionActor
{
    // Whether this connection's back-end has the current log (SET_LOG_BASE).
    private bool _logSent;

    private void DirtyLoggingCommands()
    {
        Receive<StartDirtyLogging>(HandleStartDirtyLogging);
        Receive<StopDirtyLogging>(HandleStopDirtyLogging);
    }

    private void DirtyLoggingResults()
    {
        Receive<LoggingStartDone>(HandleLoggingStarted);
        Receive<LoggingStopDone>(HandleLoggingStopped);
    }

    private void HandleStartDirtyLogging(StartDirtyLogging message)
    {
        if (_model.Snapshot.DirtyLog is { } existing)
        {
            Sender.Tell(new DirtyLoggingStarted(existing));
            return;
        }

        VhostUserFrontendConnection connection = Connection;
        if (_model.ValidateStartLogging(connection.SupportsDirtyLogging) is { } invalid)
        {
            Sender.Tell(new Status.Failure(invalid));
            return;
        }

        VhostUserDirtyLog log = _model.CreateLog();
        ulong? features = _model.Snapshot.GuestFeatures;
        IReadOnlyList<VhostUserRingAddresses> rings = _model.RingAddresses(logged: true);
        IActorRef sender = Sender;
        RunCommand(message, async ct =>
        {
            try
            {
                await SetLoggingAsync(connection, log.Current, features, rings, ct).ConfigureAwait(false);
            }
            catch
            {
                log.Dispose();
                throw;
            }

            return new LoggingStartDone(sender, log);
        });
    }

    private void HandleStopDirtyLogging(StopDirtyLogging message)
    {
        if (_model.Snapshot.DirtyLog is null)
        {
            Sender.Tell(DirtyLoggingStopped.Instance);
            return;
        }

        VhostUserFrontendConnection connection = Connection;
        ulong? features = _model.Snapshot.GuestFeatures;
        IReadOnlyList<VhostUserRingAddresses> rings = _model.RingAddresses(logged: false);
        IActorRef sender = Sender;
        RunCommand(message, async ct =>
        {
            await SetLoggingAsync(connection, null, features, rings, ct).ConfigureAwait(false);
            return new LoggingStopDone(sender);
        });
    }

    /// <summary>With <paramref name="log"/>: SET_LOG_BASE, LOG_ALL on, rings logged; without: LOG_ALL off, rings not logged.</summary>
    private static async Task SetLoggingAsync(
        VhostUserFrontendConnection connection, DirtyPageLog? log, ulong? features, IReadOnlyList<VhostUserRingAddresses> rings, CancellationToken ct)
    {
        if (log is not null)
        {
            await connection.SetLogBaseAsync(log, ct).ConfigureAwait(false);
        }

        // Before the guest's features were sent there is nothing to change: the first start sends them with LOG_ALL.
        if (features is ulong guest)
        {
            await connection.SetFeaturesAsync(guest, logAll: log is not null, ct).ConfigureAwait(false);
        }

        foreach (VhostUserRingAddresses ring in rings)
        {
            await connection.SetRingAddressAsync(ring, ct).ConfigureAwait(false);
        }
    }

    private void HandleLoggingStarted(LoggingStartDone message)
    {
        _logSent = true;
        _model.LoggingStarted(message.Log);
        Done(message.ReplyTo, new DirtyLoggingStarted(message.Log));
    }

    private void HandleLoggingStopped(LoggingStopDone message)
    {
        _logSent = false;
        _model.LoggingStopped();
        Done(message.ReplyTo, DirtyLoggingStopped.Instance);
    }

    /// <summary>Memory grew past the log: a larger one goes with SET_LOG_BASE after the memory update (vhost_dev_log_resize).</summary>
    private bool LogTooSmallFor(GuestMemory memory) => _model.Snapshot.DirtyLog is { } log && log.IsTooSmallFor(memory);

    private void LogGrown(DirtyPageLog? grown)
    {
        if (grown is null)
        {
            return;
        }

        if (_model.Snapshot.DirtyLog is { } log)
        {
            log.Replace(grown);
        }
        else
        {
            grown.Dispose();
        }
    }

    private sealed record LoggingStartDone(IActorRef ReplyTo, VhostUserDirtyLog Log);

    private sealed record LoggingStopDone(IActorRef ReplyTo);
}
