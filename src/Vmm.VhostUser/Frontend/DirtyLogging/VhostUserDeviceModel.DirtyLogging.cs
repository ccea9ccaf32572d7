using Akka.Actor;
using Vmm.Core.Memory;

namespace Vmm.VhostUser.Frontend;

/// <summary>The device's dirty-page log (vhost-user.rst, "Migration"): the rules every connection and the offline path share.</summary>
public sealed partial class VhostUserDeviceModel
{
    /// <summary>Why logging cannot start now, or null.</summary>
    public Exception? ValidateStartLogging(bool backendSupportsLogging)
    {
        if (!backendSupportsLogging)
        {
            return new NotSupportedException(
                $"The vhost-user back-end of {_options.Name} cannot log the pages it writes: it offers no VHOST_F_LOG_ALL or no LOG_SHMFD.");
        }

        return Snapshot.Memory is null
            ? new InvalidOperationException($"{_options.Name} has no guest memory yet (no queue started): there is nothing to log.")
            : null;
    }

    /// <summary>A log sized for the device's guest memory (not yet the snapshot's: see <see cref="LoggingStarted"/>).</summary>
    public VhostUserDirtyLog CreateLog() => VhostUserDirtyLog.For(Snapshot.Memory ?? throw new InvalidOperationException("No guest memory to log."));

    /// <summary>The running rings' addresses with their used rings logged (<paramref name="logged"/>) or not.</summary>
    public IReadOnlyList<VhostUserRingAddresses> RingAddresses(bool logged) =>
        [.. Snapshot.Queues.Values.Select(q => Logged(PlanRing(q, q.InitialState ?? FreshRing), logged).Addresses)];

    /// <summary>The back-end logs into <paramref name="log"/> from now on; the replay sends it to every next back-end.</summary>
    public void LoggingStarted(VhostUserDirtyLog log)
    {
        ArgumentNullException.ThrowIfNull(log);
        Snapshot = Snapshot with { DirtyLog = log };
    }

    /// <summary>Logging stopped: the log is closed.</summary>
    public void LoggingStopped()
    {
        VhostUserDirtyLog? log = Snapshot.DirtyLog;
        Snapshot = Snapshot with { DirtyLog = null };
        log?.Dispose();
    }

    /// <summary>
    /// <paramref name="plan"/> with the log when logging is on: SET_FEATURES carries VHOST_F_LOG_ALL,
    /// every ring's SET_VRING_ADDR VHOST_VRING_F_LOG and its used ring's address, and, when
    /// <paramref name="sendLog"/> (the back-end does not have it yet), SET_LOG_BASE.
    /// </summary>
    public BringUpPlan WithDirtyLog(BringUpPlan plan, bool sendLog)
    {
        ArgumentNullException.ThrowIfNull(plan);
        if (Snapshot.DirtyLog is not { } log)
        {
            return plan;
        }

        return plan with
        {
            LogAll = true,
            LogBase = sendLog ? log.Current : null,
            Rings = [.. plan.Rings.Select(r => Logged(r, logged: true))],
        };
    }

    /// <summary>The commands of logging without a back-end: recorded, and the next connection's replay carries them out.</summary>
    private object? ServeLoggingOffline(object command)
    {
        switch (command)
        {
            case StartDirtyLogging:
                if (Snapshot.DirtyLog is { } existing)
                {
                    return new DirtyLoggingStarted(existing);
                }

                // The next back-end must support logging (CheckCompatibility); the last one's handshake says whether it did.
                bool supported = _info is { } info && VhostUserFrontendConnection.SupportsLogging(info.Features, info.ProtocolFeatures);
                if (ValidateStartLogging(supported) is { } invalid)
                {
                    return new Status.Failure(invalid);
                }

                VhostUserDirtyLog log = CreateLog();
                LoggingStarted(log);
                return new DirtyLoggingStarted(log);

            case StopDirtyLogging:
                LoggingStopped();
                return DirtyLoggingStopped.Instance;

            default:
                return null;
        }
    }

    private static RingPlan Logged(RingPlan ring, bool logged) =>
        ring with { Addresses = ring.Addresses with { LogGuestAddress = logged ? ring.Queue.Resources.Params.DeviceArea : null } };
}
