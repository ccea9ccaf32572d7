using Akka.Actor;
using Vmm.Host.Cli;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.Host.Run;

/// <summary>
/// What a device can throw at the guest side: a back-end that broke the protocol, refused a
/// request, cannot drive the device, went away or stopped answering, or a ring it corrupted
/// (the guest driver's checks). Each is that device's failure, reported in one sentence with the
/// device's name and exit code 1 (docs/cli.md, "Exit codes"), never a process abort.
/// </summary>
internal static class DeviceFailures
{
    public static bool IsDeviceFailure(Exception e) => e is
        VhostUserProtocolException or
        VhostUserRequestFailedException or
        VhostUserIncompatibleBackendException or
        VhostUserConnectionLostException or
        VirtqueueException or
        VirtioDriverException or
        AskTimeoutException or
        TimeoutException;

    /// <summary>The failure as the one sentence <c>vmm run</c> ends with.</summary>
    public static WorkloadFailedException Describe(string device, string what, Exception e) =>
        new($"{what} on {device} failed: {OneSentence.Of(e.Message).TrimEnd('.')}.", e);
}
