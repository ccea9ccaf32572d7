namespace Vmm.VhostUser.Hosting;

/// <summary>
/// The ActorRegistry key of the top-level <see cref="Core.Machine.VmActor"/> that
/// <see cref="ManagedVmmHostingExtensions.WithManagedVmm"/> creates. A marker type: it has no
/// instances. Consumers take <c>IRequiredActor&lt;VmKey&gt;</c>; hosted services call
/// <c>GetAsync(ct)</c>, because Akka starts asynchronously.
/// </summary>
public sealed class VmKey
{
    private VmKey()
    {
    }
}

/// <summary>
/// The ActorRegistry key of the VM's InterruptControllerActor (<c>/user/vm/interrupts</c>): consumers
/// take <c>IRequiredActor&lt;InterruptControllerKey&gt;</c>. A marker type: it has no instances.
/// </summary>
public sealed class InterruptControllerKey
{
    private InterruptControllerKey()
    {
    }
}
