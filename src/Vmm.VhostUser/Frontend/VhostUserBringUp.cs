using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// What a back-end must be told to run some rings: made by <see cref="VhostUserDeviceModel"/>
/// for the first start of a queue (<see cref="VhostUserDeviceModel.PlanStart"/>) and for the
/// replay after a reconnect (<see cref="VhostUserDeviceModel.PlanReplay"/>), and carried out by
/// <see cref="VhostUserBringUp.ExecuteAsync"/> in one order for both.
/// </summary>
/// <param name="Inflight">SET_INFLIGHT_FD (with GET_INFLIGHT_FD first when there is no region yet); null: none.</param>
/// <param name="Features">SET_FEATURES with these guest features; null: the back-end has them already.</param>
/// <param name="Memory">The memory table; null: the back-end has it already.</param>
/// <param name="Rings">The rings to set up and enable.</param>
/// <param name="Config">SET_CONFIG of each range the guest wrote (a replay).</param>
/// <param name="Status">SET_STATUS with the driver's status (a replay with STATUS); null: none.</param>
/// <param name="RollBackRefusedRing">A ring the back-end refuses is stopped again and the failure returned (a first start); else any failure ends the connection.</param>
public sealed record BringUpPlan(
    InflightPlan? Inflight,
    ulong? Features,
    GuestMemory? Memory,
    IReadOnlyList<RingPlan> Rings,
    IReadOnlyList<ConfigWrite> Config,
    byte? Status,
    bool RollBackRefusedRing)
{
    /// <summary>SET_FEATURES carries VHOST_F_LOG_ALL: dirty pages are being logged (vhost-user.rst, "Migration").</summary>
    public bool LogAll { get; init; }

    /// <summary>SET_LOG_BASE with this log, after the memory table and before any ring; null: none.</summary>
    public Core.Memory.DirtyPageLog? LogBase { get; init; }

    /// <summary>True when there is nothing to send.</summary>
    public bool IsEmpty => Inflight is null && Features is null && Memory is null && Rings.Count == 0 && Config.Count == 0 && Status is null && LogBase is null;
}

/// <summary>The inflight region to hand over: <paramref name="Existing"/>, or a new one of this shape from GET_INFLIGHT_FD.</summary>
public sealed record InflightPlan(VhostUserInflightRegion? Existing, ushort NumQueues, ushort QueueSize);

/// <summary>One ring to set up: the queue it serves, where it lives and where it resumes, and its kick eventfd.</summary>
public sealed record RingPlan(QueueSnapshot Queue, VhostUserRingAddresses Addresses, EventFd Kick);

/// <summary>
/// What a bring-up changed beyond the rings: the inflight region it had to create (the caller
/// owns it); <paramref name="InflightRefused"/>: the back-end refused GET_INFLIGHT_FD, so the
/// rings run without inflight tracking.
/// </summary>
public sealed record BringUpResult(VhostUserInflightRegion? CreatedInflight, bool InflightRefused = false);

/// <summary>
/// The one bring-up sequence, for the first start and every replay, in QEMU's order
/// (vhost-user-blk's vhost_user_blk_start and vhost_dev_start):
/// <list type="number">
/// <item>GET_INFLIGHT_FD when no region exists yet, then SET_INFLIGHT_FD, before any ring
/// (vhost-user.rst, "Inflight I/O tracking": the back-end must know what was in flight before a
/// ring starts);</item>
/// <item>SET_FEATURES (with VHOST_F_LOG_ALL while logging), then the memory table, then
/// SET_LOG_BASE when the back-end does not have the log yet;</item>
/// <item>per ring SET_VRING_NUM, ADDR, BASE, then SET_VRING_CALL before SET_VRING_KICK (a back-end
/// may start the ring on its kick and complete a request at once: it needs its call fd by then);</item>
/// <item>SET_CONFIG of what the guest wrote, before any ring is enabled (requests must not run
/// against a config the guest did not see);</item>
/// <item>SET_VRING_ENABLE(1) per ring when VHOST_USER_F_PROTOCOL_FEATURES was acked;</item>
/// <item>SET_STATUS with the driver's status (QEMU adds DRIVER_OK at the end of vhost_dev_start).</item>
/// </list>
/// </summary>
public static class VhostUserBringUp
{
    /// <summary>
    /// Carries <paramref name="plan"/> out on <paramref name="connection"/>. Each ring's
    /// SET_VRING_CALL is sent by its <paramref name="routers"/> entry (same order as the plan's
    /// rings), which picks the route of that moment.
    /// </summary>
    public static async Task<BringUpResult> ExecuteAsync(
        VhostUserFrontendConnection connection, BringUpPlan plan, IReadOnlyList<VirtqueueCallRouter> routers, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(routers);
        if (routers.Count != plan.Rings.Count)
        {
            throw new ArgumentException($"{plan.Rings.Count} ring(s) planned but {routers.Count} router(s) given.", nameof(routers));
        }

        VhostUserInflightRegion? created = null;
        bool refused = false;
        try
        {
            // 1. The inflight region, before anything else. A back-end may refuse to make one
            // (mmap_size 0, no fd): the rings then run without it.
            if (plan.Inflight is { } inflight)
            {
                VhostUserInflightRegion? region = inflight.Existing ??
                    (created = await connection.GetInflightFdAsync(inflight.NumQueues, inflight.QueueSize, cancellationToken).ConfigureAwait(false));
                if (region is not null)
                {
                    await connection.SetInflightFdAsync(region, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    refused = true;
                }
            }

            // 2. Features and memory.
            if (plan.Features is ulong features)
            {
                await connection.SetFeaturesAsync(features, plan.LogAll, cancellationToken).ConfigureAwait(false);
            }

            if (plan.Memory is not null)
            {
                await connection.SetMemoryAsync(plan.Memory, cancellationToken).ConfigureAwait(false);
            }

            if (plan.LogBase is not null)
            {
                await connection.SetLogBaseAsync(plan.LogBase, cancellationToken).ConfigureAwait(false);
            }

            // 3. Each ring: where it is, its call, then its kick.
            for (int i = 0; i < plan.Rings.Count; i++)
            {
                await SetUpRingAsync(connection, plan, plan.Rings[i], routers[i], cancellationToken).ConfigureAwait(false);
            }

            // 4. The guest's config writes, before the rings run.
            foreach (ConfigWrite write in plan.Config)
            {
                await connection.SetConfigAsync(write.Offset, write.Data, cancellationToken).ConfigureAwait(false);
            }

            // 5. Enable.
            if (connection.RingsNeedEnable)
            {
                foreach (RingPlan ring in plan.Rings)
                {
                    await RunRingStepAsync(connection, plan, ring, () => connection.SetRingEnableAsync(ring.Queue.Index, true, cancellationToken), cancellationToken)
                        .ConfigureAwait(false);
                }
            }

            // 6. The driver's status.
            if (plan.Status is byte status)
            {
                await connection.SetStatusAsync(status, cancellationToken).ConfigureAwait(false);
            }
        }
        catch
        {
            created?.Dispose();
            throw;
        }

        return new BringUpResult(created, refused);
    }

    private static Task SetUpRingAsync(
        VhostUserFrontendConnection connection, BringUpPlan plan, RingPlan ring, VirtqueueCallRouter router, CancellationToken cancellationToken) =>
        RunRingStepAsync(connection, plan, ring, async () =>
        {
            await connection.SetRingAddressesAsync(ring.Addresses, cancellationToken).ConfigureAwait(false);
            await router.SendCallAsync(connection, cancellationToken).ConfigureAwait(false);
            await connection.SetRingKickAsync(ring.Queue.Index, ring.Kick.Handle, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    /// <summary>A refused ring request of a first start: GET_VRING_BASE stops whatever part of the ring the back-end set up.</summary>
    private static async Task RunRingStepAsync(
        VhostUserFrontendConnection connection, BringUpPlan plan, RingPlan ring, Func<Task> step, CancellationToken cancellationToken)
    {
        try
        {
            await step().ConfigureAwait(false);
        }
        catch (VhostUserRequestFailedException) when (plan.RollBackRefusedRing)
        {
            try
            {
                await connection.StopRingAsync(ring.Queue.Index, cancellationToken: cancellationToken).ConfigureAwait(false);
            }
            catch (VhostUserRequestFailedException)
            {
                // Nothing more to undo: the back-end refused the stop as well.
            }

            throw;
        }
    }
}
