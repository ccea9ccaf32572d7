using Akka.Configuration;
using Akka.TestKit;
using NUnit.Framework;

namespace Vmm.TestKit;

/// <summary>
/// Base class for NUnit tests of actors, modelled on Akka.TestKit.NUnit.
/// Each test case gets its own fixture instance and so its own <see cref="Akka.Actor.ActorSystem"/>,
/// named after the test; the system is shut down in <see cref="ShutdownActorSystemAsync"/>.
/// </summary>
/// <remarks>
/// Pass a <see cref="Config"/> (or HOCON text) to the protected constructor to override
/// settings; it is layered over <see cref="BaseConfig"/> and the TestKit defaults.
/// </remarks>
[FixtureLifeCycle(LifeCycle.InstancePerTestCase)]
public abstract class AkkaTest : TestKitBase, IDisposable
{
    /// <summary>Settings every test system starts from: warnings and errors only.</summary>
    public static Config BaseConfig { get; } = ConfigurationFactory.ParseString(
        """
        akka.loglevel = WARNING
        akka.stdout-loglevel = WARNING
        """);

    private bool _shutDown;

    protected AkkaTest()
        : this((Config?)null)
    {
    }

    protected AkkaTest(string hocon)
        : this(ConfigurationFactory.ParseString(hocon))
    {
    }

    protected AkkaTest(Config? config)
        : base(NUnitAssertions.Instance, Compose(config), SystemNameFor(TestContext.CurrentContext.Test.MethodName))
    {
    }

    /// <summary>
    /// Turns a test method name into a valid ActorSystem name: ActorSystem names may only
    /// contain [a-zA-Z0-9-], and must start with a letter or digit.
    /// </summary>
    public static string SystemNameFor(string? testName)
    {
        var chars = (testName ?? string.Empty)
            .Select(c => char.IsAsciiLetterOrDigit(c) ? c : '-')
            .ToArray();
        return "test-" + new string(chars).Trim('-');
    }

    [TearDown]
    public async Task ShutdownActorSystemAsync()
    {
        if (_shutDown)
        {
            return;
        }

        _shutDown = true;
        await ShutdownAsync(verifySystemShutdown: true);
    }

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing && !_shutDown)
        {
            _shutDown = true;
            Shutdown(verifySystemShutdown: true);
        }
    }

    private static Config Compose(Config? config) =>
        (config ?? Config.Empty).WithFallback(BaseConfig).WithFallback(DefaultConfig);
}
